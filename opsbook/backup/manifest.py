"""What is on disk: backup names, the manifest, listing, the latest backup, and verification.

A backup is one directory in the inventory's `backup.dir`:

    opsbook-backup-20261127T020000Z/
        redis-queue.rdb          a Redis RDB snapshot per Redis target (`redis-cli --rdb`)
        postgres-chatdb.dump     pg_dump, custom format, per PostgreSQL target
        data.tar                 the inventory's backup.data_paths (only when it names some)
        manifest.json            per part: size, SHA-256, start and end; the backup's start/end
"""

from __future__ import annotations

import hashlib
import json
import re
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from msgspec import Struct

from opsbook.backup.tools import BackupError

BACKUP_PREFIX = "opsbook-backup-"  # remediation/disk.py deletes only names with this prefix
MANIFEST = "manifest.json"
FORMAT = "opsbook-backup/1"
STAMP = "%Y%m%dT%H%M%SZ"
# Only directories named like this are opsbook's: retention never touches anything else.
NAME = re.compile(re.escape(BACKUP_PREFIX) + r"(?P<stamp>\d{8}T\d{6}Z)(?:-(?P<n>\d+))?")
DATA_PART = "data.tar"
CHUNK = 1024 * 1024


def postgres_part(name: str) -> str:
    return f"postgres-{name}.dump"


def redis_part(name: str) -> str:
    return f"redis-{name}.rdb"


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class BackupInfo(Struct, frozen=True):
    """One of opsbook's backups on disk, as far as its directory and manifest tell."""

    path: Path
    manifest: dict[str, Any] | None  # None when manifest.json is missing or unreadable
    manifest_problem: str = ""

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def started(self) -> datetime:
        """When the backup began (the manifest's time; without one, the directory's mtime)."""
        if self.manifest is not None:
            with suppress(KeyError, TypeError, ValueError):
                return datetime.fromisoformat(str(self.manifest["started"]))
        return datetime.fromtimestamp(self.path.stat().st_mtime, UTC)

    def age_s(self, now: datetime | None = None) -> float:
        return ((now or utc_now()) - self.started).total_seconds()

    def parts(self) -> dict[str, dict[str, Any]]:
        if self.manifest is None:
            return {}
        parts = self.manifest.get("parts")
        return parts if isinstance(parts, dict) else {}


def read_backup(path: Path) -> BackupInfo:
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return BackupInfo(path, None, f"{MANIFEST} is missing")
    except (OSError, ValueError) as exc:
        return BackupInfo(path, None, f"{MANIFEST} is unreadable: {exc}")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return BackupInfo(path, None, f"{MANIFEST} is not an {FORMAT} manifest")
    return BackupInfo(path, manifest)


def list_backups(directory: Path) -> list[BackupInfo]:
    """opsbook's backups in `directory`, oldest first (staging directories are not listed)."""
    if not directory.is_dir():
        return []
    found = [
        read_backup(entry)
        for entry in directory.iterdir()
        if NAME.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink()
    ]
    return sorted(found, key=lambda info: _sort_key(info.name))


def _sort_key(name: str) -> tuple[str, int]:
    match = NAME.fullmatch(name)
    assert match is not None
    return match["stamp"], int(match["n"] or 1)


def latest_backup(directory: Path) -> BackupInfo | None:
    backups = list_backups(directory)
    return backups[-1] if backups else None


def find_backup(directory: Path, name: str) -> BackupInfo:
    """The backup called `name` (or `latest`); BackupError if there is none such."""
    if name == "latest":
        found = latest_backup(directory)
        if found is None:
            raise BackupError(f"no backup in {directory}")
        return found
    if not NAME.fullmatch(name) or not (directory / name).is_dir():
        raise BackupError(f"no backup {name!r} in {directory}")
    return read_backup(directory / name)


def verify(info: BackupInfo) -> list[str]:
    """What is wrong with a backup: missing parts, sizes or checksums that do not match."""
    if info.manifest is None:
        return [info.manifest_problem]
    problems = []
    parts = info.parts()
    if not parts:
        problems.append(f"{MANIFEST} lists no parts")
    for file, part in sorted(parts.items()):
        path = info.path / file
        if "/" in file or not path.is_file():
            problems.append(f"{file} is missing")
            continue
        size = path.stat().st_size
        if size != part.get("size"):
            problems.append(f"{file} has {size} bytes (manifest: {part.get('size')})")
            continue
        digest = sha256_of(path)
        if digest != part.get("sha256"):
            problems.append(
                f"{file} has SHA-256 {digest[:12]}... (manifest: {str(part.get('sha256'))[:12]}...)"
            )
    return problems
