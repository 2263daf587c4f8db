"""The restore drill (BACKUP-003) and restoring production from a backup, on a real sandbox.

Messages are really posted through nginx and stored by the worker; rows are really deleted as
the PostgreSQL superuser; the restore really runs pg_restore and reloads Redis's RDB.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import requests
from support import RunChecks
from test_backup import backup_command, backup_inventory

from opsbook import backup
from opsbook.inventory import load_inventory
from opsbook.remediate.plan import RISKY
from opsbook.sandbox.postgres import Postgres
from opsbook.sandbox.stack import Stack

pytestmark = pytest.mark.sandbox


def _post(stack: Stack, count: int) -> list[str]:
    base = f"http://127.0.0.1:{stack.state.ports['nginx']}"
    ids = []
    for n in range(count):
        answer = requests.post(
            f"{base}/api/messages", json={"content": f"drill {n}", "user_id": "drill"}, timeout=3
        )
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["id"])
    return ids


def _count(database: Postgres, sql: str) -> int:
    return int(database.psql(sql, "chatdb").strip())


def _stored(database: Postgres, ids: list[str]) -> int:
    listed = ",".join(f"'{i}'" for i in ids)
    return _count(database, f"SELECT count(*) FROM messages WHERE id IN ({listed})")


def test_drill_restores_the_latest_backup_into_a_scratch_cluster(
    sandbox: Stack, tmp_path: Path, run_checks: RunChecks
) -> None:
    database = Postgres(sandbox.layout, sandbox.state.ports["postgres"])
    ids = _post(sandbox, 3)
    deadline = time.monotonic() + 10
    while _stored(database, ids) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    inventory = backup_inventory(sandbox, tmp_path / "backups")
    assert backup_command("--inventory", str(inventory)).returncode == 0
    result = run_checks("--check=BACKUP-003", "-m", "weekly", inventory=inventory)
    row = result.row("BACKUP-003", "chatdb")
    assert row["outcome"] == "passed", result.output
    observed = row["observed"]
    assert observed["restore_s"] > 0
    assert observed["backup_age_s"] >= 0
    restored, production = observed["rows"]["messages"]
    assert restored >= 3
    assert production >= 3
    assert not list(Path("/tmp").glob("opsbook-drill-*")), "the scratch cluster was left behind"


@pytest.mark.breaks("BACKUP-003")
def test_drill_fails_on_a_dump_that_does_not_restore(
    sandbox: Stack, tmp_path: Path, run_checks: RunChecks
) -> None:
    inventory = backup_inventory(sandbox, tmp_path / "backups")
    assert backup_command("--inventory", str(inventory)).returncode == 0
    latest = backup.latest_backup(tmp_path / "backups")
    assert latest is not None
    # A dump that is complete by its manifest (checksum updated) but not a valid archive:
    dump = latest.path / "postgres-chatdb.dump"
    dump.write_bytes(dump.read_bytes()[:200])
    manifest = json.loads((latest.path / "manifest.json").read_text())
    manifest["parts"][dump.name].update(
        size=dump.stat().st_size, sha256=hashlib.sha256(dump.read_bytes()).hexdigest()
    )
    (latest.path / "manifest.json").write_text(json.dumps(manifest))
    result = run_checks("--check=BACKUP-002,BACKUP-003", "-m", "backup", inventory=inventory)
    assert result.outcome("BACKUP-002") == "passed", result.output
    row = result.row("BACKUP-003", "chatdb")
    assert row["outcome"] == "failed", result.output
    assert row["message"].startswith(
        f"postgres chatdb: backup {latest.name}: pg_restore of postgres-chatdb.dump"
    ), row["message"]
    assert not list(Path("/tmp").glob("opsbook-drill-*")), "the scratch cluster was left behind"


def test_restore_brings_deleted_rows_and_the_queue_back(
    fresh_sandbox: Stack, tmp_path: Path
) -> None:
    stack = fresh_sandbox
    database = Postgres(stack.layout, stack.state.ports["postgres"])
    ids = _post(stack, 5)
    deadline = time.monotonic() + 10
    while _stored(database, ids) < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    inventory_path = backup_inventory(stack, tmp_path / "backups")
    taken = backup_command("--inventory", str(inventory_path))
    assert taken.returncode == 0, taken.stderr
    database.psql("DELETE FROM messages; DELETE FROM conversations;", "chatdb")
    assert _stored(database, ids) == 0

    plan = backup_command("restore", "latest", "--inventory", str(inventory_path))
    assert plan.returncode == 0, plan.stderr
    assert "[restore] replace the rows of postgres chatdb (chatdb)" in plan.stdout
    assert "[restore] load " in plan.stdout
    assert "redis-queue.rdb into redis queue" in plan.stdout
    reports = ["--reports-dir", str(tmp_path / "reports")]
    refused = backup_command(
        "restore", "latest", "--inventory", str(inventory_path), "--apply", *reports
    )
    if "restore" not in RISKY:
        # Until "restore" is a risky kind, the remediation refuses to act, allowed or not.
        assert refused.returncode == 3, refused.stdout + refused.stderr
        assert "not registered as risky" in refused.stdout
        inventory = load_inventory(inventory_path, environ={})
        latest = backup.latest_backup(tmp_path / "backups")
        assert latest is not None
        counts = backup.restore_postgres(
            inventory.postgres["chatdb"], latest.path / "postgres-chatdb.dump"
        )
        keys = backup.restore_redis(
            inventory.redis["queue"], latest.path / "redis-queue.rdb",
            lambda: stack.restart("redis"),
        )  # fmt: skip
        assert counts["messages"] >= 5
        assert keys >= 1
    else:
        assert refused.returncode == 3
        assert "not allowed: restore" in refused.stdout
        done = backup_command(
            "restore", "latest", "--inventory", str(inventory_path), "--apply",
            "--allow=restore", *reports,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert "conversations 5, messages 5" in done.stdout
    assert _stored(database, ids) == 5
    assert _count(database, "SELECT count(*) FROM conversations WHERE user_id = 'drill'") == 5
    # Redis came back with the snapshot's processed ids, and the stack works on.
    from opsbook.canary import run_canary

    inventory = load_inventory(inventory_path, environ={})
    assert run_canary(inventory, 10).failed_hop is None
