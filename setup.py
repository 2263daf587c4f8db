"""The build records the commit it was built from, for `opsbook --version` (the rest of the
project's metadata is in pyproject.toml)."""

import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildWithCommit(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install runs from the checkout: the commit is read from git
        try:
            commit = subprocess.run(
                ["git", "-C", str(HERE), "rev-parse", "HEAD"],
                capture_output=True, text=True, timeout=10, check=True,
            ).stdout.strip()  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            commit = "unknown"  # built from an sdist or a copy without git
        target = Path(self.build_lib) / "opsbook" / "BUILD_COMMIT"
        target.write_text(commit + "\n", encoding="utf-8")


setup(cmdclass={"build_py": BuildWithCommit})
