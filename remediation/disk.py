"""Disk: the disk runbook's cleanup, limited to what opsbook itself may delete.

Only two kinds of files are ever deleted, and only when older than the inventory's
`remediation.retention_days`:

- opsbook's own backups: the folders (`python -m opsbook backup` writes
  `opsbook-backup-<UTC stamp>/`) or files named so, directly in the directory `backups` of a
  data filesystem the inventory lists for the host (`hosts.NAME.filesystems`), never the
  newest one; anything else in that directory is not opsbook's and is left alone.
- rotated logs next to a log the inventory lists (`hosts.NAME.logs`): for `worker.log`, the
  regular files `worker.log.1`, `worker.log.2.gz`, `worker.log-20240501`,
  `worker.log.2024-05-01.gz` in the same directory, never the live `worker.log`.

And only in the directories on a filesystem that is over the limit (`df -P`): deleting files
elsewhere would not fix the check.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from typing import Any

from msgspec import Struct

from opsbook.backup import BACKUP_PREFIX, NAME
from opsbook.remediate.context import Context
from opsbook.remediate.plan import Plan, StepKind

BACKUPS_DIR = "backups"
# What logrotate and Python's rotating handlers append: .1, .1.gz, -20240501, .2024-05-01.gz
ROTATED_SUFFIX = re.compile(r"[.-]\d[\d.-]*(\.(gz|xz|bz2|zst))?")
# The last line of `df -P PATH` (as RES-001 reads it): use percent and mount point.
_DF_LINE = re.compile(r"\s(?P<percent>\d+)%\s+(?P<mount>/.*)$")
RM_BATCH = 200  # files per `rm`, well under the argument-length limit


def backups_dir(filesystem: str) -> str:
    """Where opsbook's backups of a data filesystem live (see the module docstring)."""
    return posixpath.join(filesystem, BACKUPS_DIR)


def is_rotated_log(log_name: str, name: str) -> bool:
    return name.startswith(log_name) and bool(ROTATED_SUFFIX.fullmatch(name[len(log_name) :]))


class OldFile(Struct, frozen=True):
    path: str
    size: int
    age_days: float
    is_dir: bool = False


def _df(host: Any, path: str, timeout_s: float) -> tuple[int, str] | None:
    """(percent used, mount point) of the filesystem holding path; None if it cannot be read."""
    df = host.run("timeout %s df -P -- %s", f"{timeout_s:g}", path)
    lines = df.stdout.strip().splitlines()
    match = _DF_LINE.search(lines[-1]) if df.rc == 0 and len(lines) > 1 else None
    return (int(match["percent"]), match["mount"]) if match else None


def _files(host: Any, directory: str, now: float) -> list[OldFile]:
    """The regular files and folders directly in directory (symlinks: neither followed nor
    listed); a folder's size is what `du` counts."""
    if host.run("test -d %s", directory).rc != 0:
        return []
    found = host.run(
        "find %s -mindepth 1 -maxdepth 1 \\( -type f -o -type d \\) -printf '%%y %%T@ %%s %%p\\0'",
        directory,
    )
    if found.rc != 0:
        raise RuntimeError(f"cannot list {directory}: {found.stderr.strip()}")
    files = []
    for entry in found.stdout.split("\0"):
        if entry:
            kind, mtime, size, path = entry.split(" ", 3)
            if kind == "d":
                du = host.run("du -sb -- %s", path)
                size = du.stdout.split()[0] if du.rc == 0 and du.stdout.split() else size
            files.append(OldFile(path, int(size), (now - float(mtime)) / 86400, kind == "d"))
    return files


def _size(total: int) -> str:
    return f"{total / 1024 / 1024:.1f} MiB" if total >= 1024 * 1024 else f"{total / 1024:.0f} KiB"


def delete_past_retention(ctx: Context, *, apply: bool) -> Plan:
    """Delete opsbook's own backups and rotated logs older than the retention period, on the
    host's filesystems that are over the disk use limit.

    Changes: deletes, through the host (testinfra: local, ssh, ...), exactly the files listed in
    the plan: `opsbook-backup-*` in each data filesystem's `backups/` directory and rotated
    copies of the host's logs (`NAME.1`, `NAME.2.gz`, ...), older than
    remediation.retention_days, in directories on a filesystem over
    thresholds.disk_used_percent. Nothing else is touched: not the live logs, not other files.
    Privileges: the host login of the inventory's spec, with write access to those directories.
    Undo: none; the files are gone. Restore a backup from its off-site copy if it is needed.
    """
    import testinfra  # slow to import; only a disk fix needs it

    plan = Plan.for_fix(ctx)
    spec = ctx.host_spec()
    host = testinfra.get_host(spec.spec)
    limit = ctx.thresholds.disk_used_percent
    days = ctx.inventory.remediation.retention_days
    timeout = ctx.thresholds.timeout_s
    usage = {path: _df(host, path, timeout) for path in spec.filesystems}
    full = {path: used for path, used in usage.items() if used and used[0] > limit}
    if not full:
        return plan.nothing(f"no filesystem of {ctx.target} is over {limit:g}%")
    full_mounts = {mount for _, mount in full.values()}
    now = float(host.run("date +%s").stdout)

    def on_full_filesystem(directory: str) -> bool:
        used = _df(host, directory, timeout) if host.run("test -d %s", directory).rc == 0 else None
        return used is not None and used[1] in full_mounts

    old: dict[str, OldFile] = {}
    for filesystem in spec.filesystems:
        directory = backups_dir(filesystem)
        if on_full_filesystem(directory):
            backups = [
                f
                for f in _files(host, directory, now)
                if (NAME.fullmatch(posixpath.basename(f.path)) if f.is_dir
                    else posixpath.basename(f.path).startswith(BACKUP_PREFIX))
            ]  # fmt: skip
            newest = min(backups, key=lambda f: f.age_days, default=None)
            for file in backups:
                if file is not newest and file.age_days > days:
                    old[file.path] = file
    for log in spec.logs:
        directory, log_name = posixpath.split(log)
        if on_full_filesystem(directory):
            for file in _files(host, directory, now):
                name = posixpath.basename(file.path)
                if not file.is_dir and is_rotated_log(log_name, name) and file.age_days > days:
                    old[file.path] = file
    where = ", ".join(f"{path} ({used[0]}%)" for path, used in full.items())
    if not old:
        return plan.nothing(
            f"no opsbook backups or rotated logs older than {days} days on {where}; "
            "free space by hand"
        )
    files = sorted(old.values(), key=lambda f: f.path)
    total = sum(f.size for f in files)
    listing = ", ".join(f"{f.path} ({_size(f.size)}, {f.age_days:.0f} days old)" for f in files)

    def delete() -> str:
        for start in range(0, len(files), RM_BATCH):
            batch = [f.path for f in files[start : start + RM_BATCH]]
            # -r only reaches opsbook's backup folders: nothing else listed is a folder.
            done = host.run("rm -r -- " + " ".join(["%s"] * len(batch)), *batch)
            if done.rc != 0:
                raise RuntimeError(
                    f"rm exited {done.rc} after {start} file(s) were deleted: {done.stderr.strip()}"
                )
        return f"deleted {len(files)} file(s), {_size(total)}"

    plan.add(
        f"delete {len(files)} file(s), {_size(total)}, older than {days} days on {where}: "
        + listing,
        "rm -r -- " + " ".join(shlex.quote(f.path) for f in files),
        StepKind.DELETE_FILES,
        delete,
    )
    return plan.finish(apply, ctx.gate)
