"""Taking a backup: a Redis snapshot, a pg_dump, a tar of the data paths, and the manifest.

The backup is written under a hidden staging name (`.opsbook-backup-STAMP.partial`) and renamed
into place once the manifest is written, so a directory with the backup's name is always
complete. Redis is snapshotted before PostgreSQL: the worker stores a message before it lists
its id in processed_messages, so every id in the snapshot is in the later dump.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import tarfile
from datetime import datetime
from pathlib import Path
from typing import Any

from opsbook.backup.manifest import (
    BACKUP_PREFIX,
    DATA_PART,
    FORMAT,
    MANIFEST,
    STAMP,
    BackupInfo,
    iso,
    postgres_part,
    read_backup,
    redis_part,
    sha256_of,
    utc_now,
)
from opsbook.backup.tools import (
    BackupError,
    admin_login,
    pg_client,
    pg_dump_command,
    pg_env,
    postgres_admin_connection,
    redis_admin_client,
    redis_cli_args,
    redis_env,
    run_tool,
    server_major,
)
from opsbook.inventory import Inventory, Redis


def _part(path: Path, kind: str, target: str, started: datetime, **extra: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "target": target,
        "size": path.stat().st_size,
        "sha256": sha256_of(path),
        "started": iso(started),
        "finished": iso(utc_now()),
        **extra,
    }


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _free_name(directory: Path, started: datetime) -> str:
    base = f"{BACKUP_PREFIX}{started:{STAMP}}"
    name, n = base, 1
    while (directory / name).exists() or (directory / f".{name}.partial").exists():
        n += 1
        name = f"{base}-{n}"
    return name


def plan_backup(inventory: Inventory) -> list[str]:
    """The commands a backup runs, for a remediation's plan (passwords from the environment)."""
    if inventory.backup is None:
        raise BackupError("the inventory has no backup: section")
    stage = inventory.backup.dir / ".opsbook-backup-STAMP.partial"
    lines = []
    for name, redis_spec in sorted(inventory.redis.items()):
        user = redis_spec.admin.user if redis_spec.admin else "?"
        argv = [*redis_cli_args(redis_spec, user), "--rdb", str(stage / redis_part(name))]
        lines.append("REDISCLI_AUTH=<admin password> " + shlex.join(argv))
    for name, spec in sorted(inventory.postgres.items()):
        user = spec.admin.user if spec.admin else "?"
        # Which pg_dump is decided when the backup is taken: the server's version's.
        argv = pg_dump_command("pg_dump", spec, user, stage / postgres_part(name))
        lines.append("PGPASSWORD=<admin password> " + shlex.join(argv))
    if inventory.backup.data_paths:
        paths = [str(p) for p in inventory.backup.data_paths]
        lines.append(shlex.join(["tar", "-cf", str(stage / DATA_PART), *paths]))
    lines.append(f"write {MANIFEST}; mv {stage} {inventory.backup.dir}/{BACKUP_PREFIX}STAMP")
    return lines


def take_backup(inventory: Inventory) -> BackupInfo:
    """Take a complete backup now; the staging directory is removed if any part fails."""
    if inventory.backup is None:
        raise BackupError("the inventory has no backup: section")
    directory = inventory.backup.dir
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    started = utc_now()
    name = _free_name(directory, started)
    stage = directory / f".{name}.partial"
    stage.mkdir(mode=0o700)
    try:
        parts: dict[str, dict[str, Any]] = {}
        for target, redis_spec in sorted(inventory.redis.items()):
            parts.update(_redis_snapshot(target, redis_spec, stage))
        for target, spec in sorted(inventory.postgres.items()):
            out, begun = stage / postgres_part(target), utc_now()
            user, password = admin_login(spec.admin, f"postgres {target}")
            what = f"pg_dump of postgres {target}"
            with postgres_admin_connection(spec, "opsbook-backup") as conn:
                major = server_major(conn)
            pg_dump = pg_client("pg_dump", major, what)
            run_tool(pg_dump_command(pg_dump, spec, user, out), env=pg_env(spec, password),
                     what=what)  # fmt: skip
            parts[out.name] = _part(
                out, "postgres", target, begun, database=spec.database, server_major=major
            )
        if inventory.backup.data_paths:
            out, begun = stage / DATA_PART, utc_now()
            _tar(inventory.backup.data_paths, out)
            paths = [str(p) for p in inventory.backup.data_paths]
            parts[out.name] = _part(out, "data", "", begun, paths=paths)
        manifest = {
            "format": FORMAT,
            "name": name,
            "inventory": inventory.name,
            "started": iso(started),
            "finished": iso(utc_now()),
            "parts": parts,
        }
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        for each in stage.iterdir():
            with each.open("rb") as stream:
                os.fsync(stream.fileno())
        stage.rename(directory / name)
        _fsync_dir(directory)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return read_backup(directory / name)


def _redis_snapshot(target: str, spec: Redis, stage: Path) -> dict[str, dict[str, Any]]:
    out, begun = stage / redis_part(target), utc_now()
    user, password = admin_login(spec.admin, f"redis {target}")
    client = redis_admin_client(spec)
    try:
        keys = int(client.dbsize())
    except Exception as exc:
        raise BackupError(f"redis {target}: DBSIZE as {user}: {exc}") from None
    finally:
        client.close()
    # Asks the server for a full sync, as a replica would: a consistent point-in-time RDB.
    run_tool([*redis_cli_args(spec, user), "--rdb", str(out)], env=redis_env(password),
             what=f"RDB snapshot of redis {target}")  # fmt: skip
    if not out.is_file() or out.stat().st_size == 0:
        raise BackupError(f"RDB snapshot of redis {target}: redis-cli wrote no data to {out}")
    return {out.name: _part(out, "redis", target, begun, keys=keys)}


def _tar(paths: tuple[Path, ...], out: Path) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise BackupError(f"tar of backup.data_paths: missing {', '.join(missing)}")
    try:
        with tarfile.open(out, "w") as archive:
            for path in paths:
                archive.add(path)
    except OSError as exc:
        raise BackupError(f"tar of backup.data_paths into {out}: {exc}") from None
