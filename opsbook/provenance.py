"""Who and what produced a run: opsbook's version and commit, the operator, the inventory's
digest. The HTML report shows them on its first screen; findings.json carries them, so that a
page rendered later from findings.json alone (the status page, a fleet's) can too."""

from __future__ import annotations

import getpass
import hashlib
import os
import socket
from pathlib import Path
from typing import Any


def operator() -> str:
    """user@host of the runner."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def file_sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def provenance(inventory_path: Path | None) -> dict[str, Any]:
    """findings.json's run.provenance."""
    from opsbook import version

    return {
        "opsbook_version": version.version(),
        "commit": version.commit(),
        "operator": operator(),
        "inventory_sha256": file_sha256(inventory_path) if inventory_path else None,
    }
