"""Backups: the command takes a complete one, and BACKUP-001/002 catch a stale or broken one.

Every backup here is a real one of the shared sandbox (pg_dump, Redis RDB over SYNC, tar); it
is then really truncated, bit-flipped, stripped of its Redis part or aged, and the checks are
run as an operator would run them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from support import RunChecks

from opsbook import backup
from opsbook.inventory import load_inventory
from opsbook.sandbox.stack import Stack, sandbox_inventory_sections

pytestmark = pytest.mark.sandbox

REPO = Path(__file__).resolve().parents[2]
DAY_S = 86400


def backup_inventory(stack: Stack, backups: Path) -> Path:
    """The sandbox's inventory with the backup: and deploy: sections, backups into `backups`."""
    raw = yaml.safe_load(stack.inventory_path.read_text())
    raw.update(sandbox_inventory_sections(stack.dir))
    raw["backup"]["dir"] = str(backups)
    path = backups.parent / f"inventory-{backups.name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def backup_command(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m opsbook backup ...` (through the command module until cli.py lists it)."""
    program = (
        "import argparse, sys; from opsbook.commands import backup as b; "
        "p = argparse.ArgumentParser(); b.register(p.add_subparsers()); "
        "a = p.parse_args(sys.argv[1:]); sys.exit(a.run(a))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSBOOK_")}
    return subprocess.run(
        [sys.executable, "-c", program, "backup", *args], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def taken(sandbox: Stack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real backup of the sandbox, taken with the command; tests work on copies of it."""
    backups = tmp_path_factory.mktemp("taken") / "backups"
    done = backup_command("--inventory", str(backup_inventory(sandbox, backups)))
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip().splitlines()[-1]).parent == backups
    return backups


@pytest.fixture
def copy(taken: Path, sandbox: Stack, tmp_path: Path) -> tuple[Path, Path]:
    """(inventory, the copied backup's directory) for one test to break."""
    backups = tmp_path / "backups"
    shutil.copytree(taken, backups)
    (latest,) = backups.iterdir()
    return backup_inventory(sandbox, backups), latest


def test_command_writes_a_complete_backup_and_the_checks_pass(
    copy: tuple[Path, Path], run_checks: RunChecks
) -> None:
    inventory, latest = copy
    manifest = json.loads((latest / "manifest.json").read_text())
    assert set(manifest["parts"]) == {"postgres-chatdb.dump", "redis-queue.rdb", "data.tar"}
    assert backup.verify(backup.read_backup(latest)) == []
    assert oct(latest.stat().st_mode & 0o777) == "0o700"
    result = run_checks("-m", "backup and daily", inventory=inventory)
    assert result.outcome("BACKUP-001") == "passed", result.output
    assert result.outcome("BACKUP-002") == "passed", result.output
    listing = backup_command("list", "--inventory", str(inventory))
    assert f"{latest.name}" in listing.stdout
    assert "complete" in listing.stdout


def _truncate(latest: Path) -> str:
    dump = latest / "postgres-chatdb.dump"
    with dump.open("r+b") as stream:
        stream.truncate(dump.stat().st_size // 2)
    return "postgres-chatdb.dump has"


def _flip_a_byte(latest: Path) -> str:
    dump = latest / "postgres-chatdb.dump"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))
    return "postgres-chatdb.dump has SHA-256"


def _delete_redis_part(latest: Path) -> str:
    (latest / "redis-queue.rdb").unlink()
    return "redis-queue.rdb is missing"


@pytest.mark.parametrize("corrupt", [_truncate, _flip_a_byte, _delete_redis_part])
@pytest.mark.breaks("BACKUP-002")
def test_a_corrupted_backup_fails_the_completeness_check(
    copy: tuple[Path, Path], run_checks: RunChecks, corrupt
) -> None:
    inventory, latest = copy
    expected = corrupt(latest)
    result = run_checks("--check=BACKUP-001,BACKUP-002", "-m", "backup", inventory=inventory)
    assert result.outcome("BACKUP-001") == "passed", result.output
    row = result.row("BACKUP-002")
    assert row["outcome"] == "failed", result.output
    assert row["message"].startswith(f"sandbox: backup {latest.name}: "), row["message"]
    assert expected in row["message"], row["message"]


@pytest.mark.breaks("BACKUP-001")
def test_an_old_backup_fails_the_age_check(copy: tuple[Path, Path], run_checks: RunChecks) -> None:
    inventory, latest = copy
    old = datetime.now(UTC) - timedelta(days=2)
    manifest = json.loads((latest / "manifest.json").read_text())
    manifest["started"] = manifest["finished"] = old.isoformat(timespec="seconds")
    (latest / "manifest.json").write_text(json.dumps(manifest))
    os.utime(latest, (old.timestamp(), old.timestamp()))
    result = run_checks("--check=BACKUP-001,BACKUP-002", "-m", "backup", inventory=inventory)
    row = result.row("BACKUP-001")
    assert row["outcome"] == "failed", result.output
    message = row["message"]
    assert message.startswith(f"sandbox: backup {latest.name}: 2 days, 0:00:"), message
    assert message.endswith(" old (expected younger than 1 day, 0:00:00)"), message
    assert result.outcome("BACKUP-002") == "passed"  # old, but still complete


@pytest.mark.breaks("BACKUP-001")
def test_no_backup_at_all_fails_and_no_section_skips(
    sandbox: Stack, tmp_path: Path, run_checks: RunChecks
) -> None:
    inventory = backup_inventory(sandbox, tmp_path / "empty")
    result = run_checks("--check=BACKUP-001", "-m", "backup", inventory=inventory)
    assert result.row("BACKUP-001")["message"] == (
        f"sandbox: backup dir {tmp_path / 'empty'}: no opsbook backup found"
    )
    without = yaml.safe_load(sandbox.inventory_path.read_text())
    del without["backup"]
    (tmp_path / "without.yaml").write_text(yaml.safe_dump(without))
    plain = run_checks("--check=BACKUP-001", "-m", "backup", inventory=tmp_path / "without.yaml")
    assert plain.outcome("BACKUP-001") == "skipped"
    assert "no backup: section" in plain.row("BACKUP-001")["message"]


def test_retention_deletes_only_opsbooks_old_backups(copy: tuple[Path, Path]) -> None:
    _, latest = copy
    backups = latest.parent
    old = datetime.now(UTC) - timedelta(days=40)
    aged = backups / f"opsbook-backup-{old:%Y%m%dT%H%M%SZ}"
    shutil.copytree(latest, aged)
    manifest = json.loads((aged / "manifest.json").read_text())
    manifest["started"] = old.isoformat(timespec="seconds")
    (aged / "manifest.json").write_text(json.dumps(manifest))
    foreign = [backups / "opsbook-backup-by-hand", backups / "nightly.sql"]
    foreign[0].mkdir()
    foreign[1].write_text("not opsbook's")
    for path in foreign:
        os.utime(path, (time.time() - 60 * DAY_S,) * 2)
    assert backup.prune(backups, 30) == [aged.name]
    assert sorted(p.name for p in backups.iterdir()) == sorted(
        [latest.name, "opsbook-backup-by-hand", "nightly.sql"]
    )
    # The newest backup is kept even past retention: retention never leaves no backup.
    assert backup.prune(backups, 30) == []


def test_take_backup_remediation_plans_then_does_nothing_when_fresh(
    copy: tuple[Path, Path],
) -> None:
    from opsbook.remediate.context import Context
    from opsbook.remediation.backup import take_backup

    inventory_path, latest = copy
    inventory = load_inventory(inventory_path, environ={})
    plan = take_backup(Context(inventory, "BACKUP-001", "", ""), apply=False)
    assert (
        plan.nothing_to_do == f"{latest.name} is complete and {plan.nothing_to_do.split()[4]} s old"
    )
    (latest / "redis-queue.rdb").unlink()
    plan = take_backup(Context(inventory, "BACKUP-002", "", ""), apply=True)
    assert plan.applied
    assert str(plan.steps[0].result).startswith("wrote opsbook-backup-")
    assert plan.steps[1].result == "not needed"
    assert backup.verify(backup.latest_backup(latest.parent)) == []
