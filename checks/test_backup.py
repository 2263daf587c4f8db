"""Backups: the backup runbook's "is there a recent, complete backup, and does it restore?"."""

from __future__ import annotations

from datetime import timedelta

import pytest

from opsbook import Finding, Inventory, PostgresTarget, Severity, Unit, check
from opsbook.backup import BackupError, BackupInfo, drill, latest_backup, verify
from opsbook.inventory import Backup
from opsbook.probes.backup import production_rows
from opsbook.remediation import backup as backups

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


def newest(backup_settings: Backup) -> BackupInfo:
    """The newest of opsbook's backups (FAIL when there is none: that is what is wrong).

    Looked up in the check's body, not in a fixture: a check run again after its fix (a new
    backup) must see the new one."""
    found = latest_backup(backup_settings.dir)
    if found is None:
        raise AssertionError(f"backup dir {backup_settings.dir}: no opsbook backup found")
    return found


def _days(seconds: float) -> timedelta:
    return timedelta(seconds=round(seconds))


@pytest.mark.daily
@check("BACKUP-001", Severity.HIGH, remediation=backups.take_backup)
def test_latest_backup_is_recent(backup_settings: Backup, finding: Finding) -> None:
    """The latest backup is younger than the allowed age.

    Risk: a restore would lose everything written since the last backup; backups may have
    stopped running altogether.
    """
    limit = backup_settings.max_age_s
    expected = f"younger than {_days(limit)}"
    found = latest_backup(backup_settings.dir)
    if found is None:
        finding.observe("no backup", expected=expected)
        finding.fail(f"backup dir {backup_settings.dir}: no opsbook backup found")
    if found.manifest is None:
        finding.attach("manifest", f"{found.manifest_problem}: age from the directory's mtime")
    age = found.age_s()
    finding.expect(
        round(age),
        expected,
        ok=age < limit,
        unit=Unit.SECONDS,
        problem=f"backup {found.name}: {_days(age)} old",
    )


@pytest.mark.daily
@check("BACKUP-002", Severity.HIGH, remediation=backups.take_backup)
def test_latest_backup_is_complete(backup_settings: Backup, finding: Finding) -> None:
    """The latest backup is complete: every part present, sizes and checksums as recorded.

    Risk: a truncated or corrupted dump is found out only when it is needed for a restore.
    """
    latest = newest(backup_settings)
    problems = verify(latest)
    if problems:
        finding.attach("problems", problems)
    if latest.manifest is not None:
        finding.attach("manifest parts", latest.parts())
    finding.expect(
        len(problems),
        "0 problems",
        ok=not problems,
        unit=Unit.COUNT,
        problem=f"backup {latest.name}: " + "; ".join(problems),
    )


@pytest.mark.weekly
@check("BACKUP-003", Severity.HIGH, remediation=backups.drill_new_backup)
def test_latest_backup_restores(
    backup_settings: Backup, postgres: PostgresTarget, inventory: Inventory, finding: Finding
) -> None:
    """The latest backup restores into a scratch database, with its rows and invariants.

    Risk: a backup that cannot be restored, or restores inconsistent data, is no backup.
    """
    queue = next(iter(inventory.redis.values())).queues.processed if inventory.redis else ""
    expected = (
        "restores; counts >= production's before the backup; no orphans; processed ids stored"
    )
    latest = newest(backup_settings)
    problems = verify(latest)
    if problems:
        finding.observe("incomplete", expected=expected)
        finding.fail(f"backup {latest.name}: not drilled, it is incomplete: {problems[0]}")
    try:
        result = drill(latest, postgres.name, queue)
    except BackupError as exc:
        finding.observe("restore failed", expected=expected)
        finding.fail(f"backup {latest.name}: {exc}")
    # A dump of a newer minor release may hold column options the scratch server does not
    # know; the drill leaves those out (restore_drill's docstring), and says so here.
    finding.attach(
        "scratch restore",
        {"dumped from": result.dumped_from, "scratch server": result.scratch_version,
         "column options left out": result.left_out},
    )  # fmt: skip
    production = production_rows(postgres, latest.started - timedelta(seconds=PIPELINE_SLACK_S))
    restored = {table: result.restored_counts.get(table, -1) for table in production}
    finding.attach(
        "row counts",
        {t: {"restored": restored[t], "production": p.total, "production_before_backup": p.before}
         for t, p in production.items()},
    )  # fmt: skip
    found = []
    missing_tables = [t for t, count in restored.items() if count < 0]
    if missing_tables:
        found.append(f"missing table(s) {', '.join(missing_tables)}")
    short = [
        f"{t} {restored[t]} < {p.before}"
        for t, p in production.items()
        if 0 <= restored[t] < p.before
    ]
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
    finding.expect(
        {
            "restore_s": round(result.restore_s, 2),
            "backup_age_s": round(latest.age_s()),
            "rows": {t: [restored[t], p.total] for t, p in production.items()},
        },
        expected,
        ok=not found,
        problem=f"backup {latest.name} restored: " + "; ".join(found),
    )
