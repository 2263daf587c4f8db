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

And only in the directories on a filesystem that is over the limit, measured with RES-001's own
probe (opsbook.probes.disk): deleting files elsewhere would not fix the check.
"""

from __future__ import annotations

import posixpath
import re
import shlex

from opsbook.backup import BACKUP_PREFIX, NAME
from opsbook.probes.disk import FileEntry, disk_usage, entries
from opsbook.probes.host import NotObserved
from opsbook.remediate.context import Context
from opsbook.remediate.plan import Plan, StepKind
from opsbook.targets import HostTarget

BACKUPS_DIR = "backups"
# What logrotate and Python's rotating handlers append: .1, .1.gz, -20240501, .2024-05-01.gz
ROTATED_SUFFIX = re.compile(r"[.-]\d[\d.-]*(\.(gz|xz|bz2|zst))?")
RM_BATCH = 200  # files per `rm`, well under the argument-length limit
DAY_S = 86400


def backups_dir(filesystem: str) -> str:
    """Where opsbook's backups of a data filesystem live (see the module docstring)."""
    return posixpath.join(filesystem, BACKUPS_DIR)


def is_rotated_log(log_name: str, name: str) -> bool:
    return name.startswith(log_name) and bool(ROTATED_SUFFIX.fullmatch(name[len(log_name) :]))


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
    plan = Plan.for_fix(ctx)
    spec = ctx.host_spec()
    host = HostTarget(ctx.target or "", spec)
    limit = ctx.thresholds.disk_used_percent
    max_age_s = ctx.inventory.remediation.retention_days * DAY_S
    timeout = ctx.thresholds.timeout_s
    # RES-001's probe and comparison: the fix acts exactly where the check fails. A filesystem
    # that cannot be measured is not known to be full: nothing is deleted for it.
    full = {}
    for path in spec.filesystems:
        try:
            usage = disk_usage(host, path, timeout_s=timeout)
        except NotObserved:
            continue
        if usage.used_percent > limit:
            full[path] = usage
    if not full:
        return plan.nothing(f"no filesystem of {ctx.target} is over {limit:g}%")
    full_mounts = {usage.mount for usage in full.values()}

    def on_full_filesystem(directory: str) -> bool:
        try:
            return disk_usage(host, directory, timeout_s=timeout).mount in full_mounts
        except NotObserved:  # no such directory: nothing to delete there
            return False

    old: dict[str, FileEntry] = {}
    for filesystem in spec.filesystems:
        directory = backups_dir(filesystem)
        if on_full_filesystem(directory):
            backups = [
                f
                for f in entries(host, directory, timeout_s=timeout)
                if (NAME.fullmatch(posixpath.basename(f.path)) if f.is_dir
                    else posixpath.basename(f.path).startswith(BACKUP_PREFIX))
            ]  # fmt: skip
            newest = min(backups, key=lambda f: f.age_s, default=None)
            for file in backups:
                if file is not newest and file.age_s > max_age_s:
                    old[file.path] = file
    for log in spec.logs:
        directory, log_name = posixpath.split(log)
        if on_full_filesystem(directory):
            for file in entries(host, directory, timeout_s=timeout):
                name = posixpath.basename(file.path)
                if not file.is_dir and is_rotated_log(log_name, name) and file.age_s > max_age_s:
                    old[file.path] = file
    days = ctx.inventory.remediation.retention_days
    where = ", ".join(f"{path} ({usage.used_percent}%)" for path, usage in full.items())
    if not old:
        return plan.nothing(
            f"no opsbook backups or rotated logs older than {days} days on {where}; "
            "free space by hand"
        )
    files = sorted(old.values(), key=lambda f: f.path)
    total = sum(f.size_bytes for f in files)
    listing = ", ".join(
        f"{f.path} ({_size(f.size_bytes)}, {f.age_s / DAY_S:.0f} days old)" for f in files
    )

    def delete() -> str:
        for start in range(0, len(files), RM_BATCH):
            batch = [f.path for f in files[start : start + RM_BATCH]]
            # -r only reaches opsbook's backup folders: nothing else listed is a folder.
            done = host.testinfra.run("rm -r -- " + " ".join(["%s"] * len(batch)), *batch)
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
