"""Backups: the backup runbook's "is there a recent, complete backup, and does it restore?"."""

from __future__ import annotations

from datetime import timedelta

import pytest

from opsbook import Severity, check
from opsbook.backup import BackupError, BackupInfo, drill, latest_backup, verify
from opsbook.inventory import Backup, Inventory
from opsbook.targets import PostgresTarget
from remediation import backup as backups

pytestmark = [pytest.mark.backup, pytest.mark.predeploy]

# The restored copy must hold at least the rows production held when the backup began; rows
# stamped this long before it may still have been in the queue then (a message's timestamp is
# its enqueue time).
PIPELINE_SLACK_S = 300


@pytest.fixture(scope="session")
def backup_settings(inventory: Inventory) -> Backup:
    if inventory.backup is None:
        pytest.skip("no backup: section in the inventory (backup.dir, max_age_s, ...)")
    return inventory.backup


@pytest.fixture
def latest(backup_settings: Backup) -> BackupInfo:
    """The newest of opsbook's backups (FAIL when there is none: that is what is wrong)."""
    found = latest_backup(backup_settings.dir)
    if found is None:
        raise AssertionError(f"backup dir {backup_settings.dir}: no opsbook backup found")
    return found


@pytest.mark.daily
@check("BACKUP-001", Severity.HIGH, remediation=backups.take_backup)
def test_latest_backup_is_recent(backup_settings: Backup, finding) -> None:
    """The latest backup is younger than the allowed age.

    Risk: a restore would lose everything written since the last backup; backups may have
    stopped running altogether.
    """
    limit = backup_settings.max_age_s
    found = latest_backup(backup_settings.dir)
    if found is None:
        finding.observe("no backup", expected=f"< {limit:g} s old")
        raise AssertionError(f"backup dir {backup_settings.dir}: no opsbook backup found")
    age = found.age_s()
    finding.observe(round(age), expected=f"< {limit:g} s")
    if found.manifest is None:
        finding.attach("manifest", f"{found.manifest_problem}: age from the directory's mtime")
    assert age < limit, (
        f"backup {found.name}: {timedelta(seconds=round(age))} old "
        f"(max {timedelta(seconds=round(limit))})"
    )


@pytest.mark.daily
@check("BACKUP-002", Severity.HIGH, remediation=backups.take_backup)
def test_latest_backup_is_complete(latest: BackupInfo, finding) -> None:
    """The latest backup is complete: every part present, sizes and checksums as recorded.

    Risk: a truncated or corrupted dump is found out only when it is needed for a restore.
    """
    problems = verify(latest)
    finding.observe(len(problems), expected="0 problems")
    if problems:
        finding.attach("problems", problems)
    if latest.manifest is not None:
        finding.attach("manifest parts", latest.parts())
    assert not problems, f"backup {latest.name}: " + "; ".join(problems)


@pytest.mark.weekly
@check("BACKUP-003", Severity.HIGH)
def test_latest_backup_restores(
    latest: BackupInfo, postgres: PostgresTarget, inventory: Inventory, finding
) -> None:
    """The latest backup restores into a scratch database, with its rows and invariants.

    Risk: a backup that cannot be restored, or restores inconsistent data, is no backup.
    """
    name = postgres.name
    queue = next(iter(inventory.redis.values())).queues.processed if inventory.redis else ""
    expected = (
        "restores; counts >= production's before the backup; no orphans; processed ids stored"
    )
    problems = verify(latest)
    if problems:
        finding.observe("incomplete", expected=expected)
        raise AssertionError(f"backup {latest.name}: not drilled, it is incomplete: {problems[0]}")
    try:
        result = drill(latest, name, queue)
    except BackupError as exc:
        finding.observe("restore failed", expected=expected)
        raise AssertionError(f"backup {latest.name}: {exc}") from None
    cutoff = latest.started - timedelta(seconds=PIPELINE_SLACK_S)
    rows: dict[str, dict[str, int]] = {}
    for table, column in (("conversations", "created_at"), ("messages", '"timestamp"')):
        ((total, before),) = postgres.query(
            f"SELECT count(*), count(*) FILTER (WHERE {column} < %s) FROM {table}", (cutoff,)
        )
        rows[table] = {
            "restored": result.restored_counts.get(table, -1),
            "production": total,
            "production_before_backup": before,
        }
    finding.observe(
        {
            "restore_s": round(result.restore_s, 2),
            "backup_age_s": round(latest.age_s()),
            "rows": {t: [r["restored"], r["production"]] for t, r in rows.items()},
        },
        expected=expected,
    )
    finding.attach("row counts", rows)
    missing_tables = [t for t, r in rows.items() if r["restored"] < 0]
    short = [
        f"{t} {r['restored']} < {r['production_before_backup']}"
        for t, r in rows.items()
        if 0 <= r["restored"] < r["production_before_backup"]
    ]
    found = []
    if missing_tables:
        found.append(f"missing table(s) {', '.join(missing_tables)}")
    if short:
        found.append(f"fewer rows than production held before the backup: {', '.join(short)}")
    if result.orphan_messages:
        found.append(f"{result.orphan_messages} message(s) without their conversation")
    if result.processed_missing:
        finding.attach("processed ids not in messages", result.processed_missing[:20])
        found.append(
            f"{len(result.processed_missing)} of {result.processed_ids} id(s) in the backup's "
            f"{queue} are not in its messages"
        )
    assert not found, f"backup {latest.name} restored for postgres {name}: " + "; ".join(found)
