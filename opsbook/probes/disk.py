"""Disk use of a host's filesystems, and the files of a directory: the runbook's `df -h`.

One way to read disk use, for RES-001, DEPLOY-003, DEPLOY-004 and the disk fix: `df -Pk`
through the host's testinfra backend, under `timeout` (df on a hung network mount never
returns). A filesystem that cannot be measured raises `NotObserved`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from msgspec import Struct

from opsbook.probes.host import NotObserved, run

if TYPE_CHECKING:
    from opsbook.targets import HostTarget

MIB = 1024 * 1024

# A line of `df -Pk`: "/dev/vda1  264212084 23359124 83031788  22% /" (a mount point may hold
# spaces; -P never wraps a line).
_DF_LINE = re.compile(
    r"^(?P<filesystem>.+?)\s+(?P<size>\d+)\s+(?P<used>\d+)\s+(?P<free>\d+)\s+"
    r"(?P<percent>\d+)%\s+(?P<mount>/.*)$"
)
# Walks up to the nearest path that exists (a directory not created yet lives on its parent's
# filesystem), prints it, then measures it.
_NEAREST = 'p=$1; while [ ! -e "$p" ]; do p=$(dirname -- "$p"); done; echo "$p"; df -Pk -- "$p"'


class DiskUsage(Struct, frozen=True):
    """The filesystem that holds `path`, as df sees it."""

    path: str
    filesystem: str  # the device or pseudo filesystem: /dev/vda1, tmpfs
    mount: str
    size_bytes: int
    used_bytes: int
    free_bytes: int  # available to unprivileged users (df's "Available")
    # df's own Capacity figure (rounded up), so the number is the one an operator sees.
    used_percent: int

    @property
    def free_mib(self) -> int:
        return round(self.free_bytes / MIB)


def parse_df(path: str, output: str) -> DiskUsage | None:
    """The usage in the output of `df -Pk -- PATH` (its last line); None if it holds none."""
    lines = output.strip().splitlines()
    match = _DF_LINE.match(lines[-1]) if len(lines) > 1 else None
    if match is None:
        return None
    return DiskUsage(
        path=path,
        filesystem=match["filesystem"],
        mount=match["mount"],
        size_bytes=int(match["size"]) * 1024,
        used_bytes=int(match["used"]) * 1024,
        free_bytes=int(match["free"]) * 1024,
        used_percent=int(match["percent"]),
    )


def disk_usage(
    host: HostTarget, path: str, *, timeout_s: float, nearest_existing: bool = False
) -> DiskUsage:
    """Disk use of the filesystem holding `path` on the host.

    `nearest_existing`: a path that does not exist yet (a backup directory before the first
    backup) is measured on its nearest existing parent, which its files will fill.
    """
    if nearest_existing:
        answer = run(host, path, "sh -c %s sh %s", _NEAREST, path, timeout_s=timeout_s)
        measured, _, output = answer.stdout.partition("\n")
    else:
        answer = run(host, path, "df -Pk -- %s", path, timeout_s=timeout_s)
        measured, output = path, answer.stdout
    if answer.rc != 0:
        raise NotObserved(host, path, f"cannot measure: {answer.why()}")
    usage = parse_df(measured, output)
    if usage is None:
        raise NotObserved(host, path, "cannot measure: no use figure in df's output")
    return usage


class FileEntry(Struct, frozen=True):
    """A regular file or a folder directly in a directory (symlinks are not listed)."""

    path: str
    size_bytes: int  # a folder: what `du` counts for all it holds
    age_s: float  # since its last modification, on the host's clock
    is_dir: bool = False


def entries(host: HostTarget, directory: str, *, timeout_s: float) -> list[FileEntry]:
    """The regular files and folders directly in `directory` (symlinks: neither followed nor
    listed), with their sizes and ages."""
    now = run(host, "clock", "date +%%s", timeout_s=timeout_s)
    if now.rc != 0:
        raise NotObserved(host, "clock", f"date failed: {now.why()}")
    found = run(
        host,
        directory,
        "find %s -mindepth 1 -maxdepth 1 \\( -type f -o -type d \\) -printf '%%y %%T@ %%s %%p\\0'",
        directory,
        timeout_s=timeout_s,
    )
    if found.rc != 0:
        raise NotObserved(host, directory, f"cannot list: {found.why()}")
    listed = []
    for entry in found.stdout.split("\0"):
        if not entry:
            continue
        kind, modified, size, path = entry.split(" ", 3)
        if kind == "d":
            du = run(host, path, "du -sb -- %s", path, timeout_s=timeout_s)
            # du still counts what it can read when a subfolder is unreadable (exit status 1).
            if not du.stdout.split():
                raise NotObserved(host, path, f"cannot size: {du.why()}")
            size = du.stdout.split()[0]
        age_s = float(now.stdout) - float(modified)
        listed.append(FileEntry(path, int(size), age_s, kind == "d"))
    return listed
