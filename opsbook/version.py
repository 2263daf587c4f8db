"""What `opsbook --version` says: the version and the commit this copy was built from."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def version() -> str:
    try:
        return metadata.version("opsbook")
    except metadata.PackageNotFoundError:
        return "unknown"


def commit() -> str:
    """The commit of a wheel's build (recorded by setup.py), else of the checkout it runs from."""
    recorded = PACKAGE / "BUILD_COMMIT"
    if recorded.is_file():
        return recorded.read_text(encoding="utf-8").strip() or "unknown"
    try:
        found = subprocess.run(
            ["git", "-C", str(PACKAGE.parent), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return found.stdout.strip() if found.returncode == 0 else "unknown"


def describe() -> str:
    return f"opsbook {version()} (commit {commit()[:12]})"
