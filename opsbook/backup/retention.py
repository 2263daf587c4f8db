"""Retention: which of opsbook's backups are past the inventory's retention, and pruning them."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

from opsbook.backup.manifest import BackupInfo, list_backups


def past_retention(
    directory: Path, retention_days: int, now: datetime | None = None
) -> list[BackupInfo]:
    """opsbook's backups older than the retention; the newest backup is always kept, so that
    retention never leaves a deployment with no backup at all."""
    backups = list_backups(directory)
    limit = retention_days * 86400
    return [info for info in backups[:-1] if info.age_s(now) > limit]


def prune(directory: Path, retention_days: int) -> list[str]:
    """Delete opsbook's backups past the retention (never another file); their names."""
    deleted = []
    for info in past_retention(directory, retention_days):
        shutil.rmtree(info.path)
        deleted.append(info.name)
    return deleted
