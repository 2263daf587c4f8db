"""What is about to be deployed, as seen from the machine that deploys: the release's git tree
and the compose file, read with the tools a person would run (`git status`, `docker compose
config`), each under a timeout.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from msgspec import Struct

from opsbook.errors import NotEvaluated


def _run(argv: list[str], timeout_s: float) -> subprocess.CompletedProcess[str] | None:
    """The finished command, or None when it did not finish within the timeout."""
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout_s, check=False
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return None


class TreeStatus(Struct, frozen=True):
    """The release's git working tree: what `git status --porcelain` lists."""

    repo: str
    changed: list[str]  # porcelain lines: "?? app.py", " M README.md"

    @property
    def changed_paths(self) -> list[str]:
        return [line[3:] for line in self.changed]


def tree_status(repo: Path, *, timeout_s: float) -> TreeStatus:
    """Uncommitted and untracked files of the git working tree at `repo`."""
    done = _run(["git", "-C", str(repo), "status", "--porcelain"], timeout_s)
    if done is None:
        raise NotEvaluated(f"repo {repo}: git status gave no answer within {timeout_s:g}s")
    if done.returncode != 0:
        raise NotEvaluated(f"repo {repo}: git status failed: {done.stderr.strip()}")
    return TreeStatus(str(repo), [line for line in done.stdout.splitlines() if line.strip()])


def docker_compose(*, timeout_s: float) -> str | None:
    """The docker CLI, when `docker compose` works on this machine; None otherwise."""
    docker = shutil.which("docker")
    if docker is None:
        return None
    done = _run([docker, "compose", "version"], timeout_s)
    return docker if done is not None and done.returncode == 0 else None


def compose_config_error(docker: str, compose_file: Path, *, timeout_s: float) -> str | None:
    """What `docker compose config -q` says is wrong with the file (its last line); None
    when the file is valid."""
    done = _run([docker, "compose", "-f", str(compose_file), "config", "-q"], timeout_s)
    if done is None:
        raise NotEvaluated(
            f"compose file {compose_file}: docker compose config gave no answer within "
            f"{timeout_s:g}s"
        )
    if done.returncode == 0:
        return None
    said = (done.stderr or done.stdout).strip().splitlines()
    return said[-1] if said else f"exit status {done.returncode}"
