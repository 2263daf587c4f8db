"""The restore drill (BACKUP-003), on a real sandbox: the latest backup restored into a scratch
PostgreSQL cluster and a scratch Redis. Restoring production is tests/test_restore.py's; the
drill of a compose stack's backups (a newer minor release's dumps) tests/test_restore_compose.py's.

Messages are really posted through nginx and stored by the worker.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import psycopg
import pytest
import requests
from support import RunChecks
from test_backup import backup_command, backup_inventory

from opsbook import backup
from opsbook.backup.restore_drill import _without_refused_options, scratch_postgres
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
    # Drills of other runs on this machine have their own scratch folders: only this one's count.
    before = set(Path("/tmp").glob("opsbook-drill-*"))
    result = run_checks("--check=BACKUP-003", "-m", "weekly", inventory=inventory)
    row = result.row("BACKUP-003", "chatdb")
    assert row["outcome"] == "passed", result.output
    observed = row["observed"]
    assert observed["restore_s"] > 0
    assert observed["backup_age_s"] >= 0
    restored, production = observed["rows"]["messages"]
    assert restored >= 3
    assert production >= 3
    left = set(Path("/tmp").glob("opsbook-drill-*")) - before
    assert not left, f"the scratch cluster was left behind: {left}"


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
    before = set(Path("/tmp").glob("opsbook-drill-*"))
    result = run_checks("--check=BACKUP-002,BACKUP-003", "-m", "backup", inventory=inventory)
    assert result.outcome("BACKUP-002") == "passed", result.output
    row = result.row("BACKUP-003", "chatdb")
    assert row["outcome"] == "failed", result.output
    assert row["message"].startswith(
        f"postgres chatdb: backup {latest.name}: pg_restore of postgres-chatdb.dump"
    ), row["message"]
    left = set(Path("/tmp").glob("opsbook-drill-*")) - before
    assert not left, f"the scratch cluster was left behind: {left}"


def test_only_the_column_options_the_scratch_server_refuses_are_left_out() -> None:
    """Of a newer minor release's schema, an attribute option the scratch server refuses as
    unknown is left out; a known one stays, even with a value it will refuse (the restore then
    fails, as it should)."""
    # An option no release knows, as pg_attver (15.20's) is to 15.18.
    create = "CREATE TABLE public.t (a integer, b integer, c integer, d integer);"
    schema = [
        create,
        "ALTER TABLE ONLY public.t ALTER COLUMN a SET (opsbook_future=26540200);",
        "ALTER TABLE ONLY public.t ALTER COLUMN b SET (n_distinct=-1, opsbook_future=26540200);",
        "ALTER TABLE ONLY public.t ALTER COLUMN c SET (n_distinct=-1);",
        "ALTER TABLE ONLY public.t ALTER COLUMN d SET (n_distinct=lots);",
    ]
    with (
        scratch_postgres() as scratch,
        psycopg.connect(scratch.dsn("postgres"), autocommit=True) as conn,
    ):
        kept, left_out = _without_refused_options(conn, "\n".join(schema))
        # The probes left nothing behind.
        assert conn.execute("SELECT to_regclass('opsbook_drill_option')").fetchone() == (None,)
    assert left_out == {"opsbook_future": 2}
    assert kept.split("\n") == [
        create,
        "",
        "ALTER TABLE ONLY public.t ALTER COLUMN b SET (n_distinct=-1);",
        schema[3],
        schema[4],
    ]
