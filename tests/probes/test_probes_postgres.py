"""The PostgreSQL probes against the sandbox's real server: what the monitoring role sees
through the run's target, and what a fix sees through a connection of its own."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from opsbook.errors import NotEvaluated
from opsbook.inventory import Inventory
from opsbook.probes import postgres as probe
from opsbook.sandbox.stack import Stack
from opsbook.targets import PostgresTarget

pytestmark = pytest.mark.sandbox

TIMEOUT_S = 3.0


@pytest.fixture
def monitor(sandbox_inventory: Inventory) -> Iterator[PostgresTarget]:
    """chatdb as the checks see it (the monitoring role)."""
    target = PostgresTarget("chatdb", sandbox_inventory.postgres["chatdb"], TIMEOUT_S)
    yield target
    target.close()


def app_connection(sandbox: Stack) -> psycopg.Connection[Any]:
    password = (sandbox.dir / "secrets" / "chat_app.password").read_text().strip()
    return psycopg.connect(
        host="127.0.0.1", port=sandbox.state.ports["postgres"], dbname="chatdb",
        user="chat_app", password=password, connect_timeout=3,
    )  # fmt: skip


def superuser(sandbox: Stack, sql: str) -> str:
    return sandbox.component("postgres").psql(sql, database="chatdb").strip()


def test_connection_use_counts_client_connections(sandbox: Stack, monitor: PostgresTarget) -> None:
    before = probe.connection_use(monitor)
    assert before.max_connections == int(superuser(sandbox, "SHOW max_connections"))
    with app_connection(sandbox), app_connection(sandbox):
        during = probe.connection_use(monitor)
        by_role = probe.connections_by_role(monitor)
    assert during.in_use >= before.in_use + 2
    assert during.used_percent == pytest.approx(100 * during.in_use / during.max_connections)
    assert sum(r.count for r in by_role if r.user == "chat_app") >= 2


def test_idle_transactions_are_seen_by_the_check_and_the_fix_alike(
    sandbox: Stack, monitor: PostgresTarget
) -> None:
    with app_connection(sandbox) as connection:
        connection.execute("SELECT count(*) FROM messages")  # opens the transaction
        pid = connection.info.backend_pid
        time.sleep(1.2)
        seen = probe.idle_transactions(monitor, older_than_s=1)
        assert [s.pid for s in seen] == [pid]
        (stuck,) = seen
        assert (stuck.user, stuck.database) == ("chat_app", "chatdb")
        assert stuck.idle_s >= 1
        assert stuck.query == "SELECT count(*) FROM messages"
        assert probe.idle_transactions(monitor, older_than_s=60) == []
        # The fix's view: its own connection, as the owner; the same session.
        with psycopg.connect(
            host="127.0.0.1", port=sandbox.state.ports["postgres"], dbname="chatdb",
            user="chat_app",
            password=(sandbox.dir / "secrets" / "chat_app.password").read_text().strip(),
            autocommit=True, connect_timeout=3,
        ) as own:  # fmt: skip
            assert [s.pid for s in probe.idle_transactions(own, older_than_s=1)] == [pid]
        connection.rollback()
    assert probe.idle_transactions(monitor, older_than_s=1) == []


def test_the_chat_tables_and_other_relations(monitor: PostgresTarget) -> None:
    assert set(probe.CHAT_TABLES) <= probe.tables(monitor)
    assert probe.relations_named(monitor, ["messages", f"nothing_{uuid.uuid4().hex}"]) == {
        "messages"
    }


def test_index_states_fold_what_the_catalog_has(sandbox: Stack, monitor: PostgresTarget) -> None:
    wanted = [
        probe.TuningIndex("idx_messages_timestamp", "messages", ("timestamp",)),
        probe.TuningIndex("idx_probe_test", "agents", ("name", "status")),
    ]
    found = probe.btree_indexes(monitor, {"messages", "agents"})
    assert any(i.table == "messages" and i.columns == ("timestamp",) for i in found)
    present, missing = probe.index_states(found, wanted)
    assert present.present
    assert present.valid
    assert not missing.present
    assert (missing.invalid, missing.building) == ((), ())

    superuser(sandbox, "CREATE INDEX probe_test_by_hand ON agents (name, status)")
    try:
        found = probe.btree_indexes(monitor, {"agents"})
        (by_hand,) = probe.index_states(found, wanted[1:])
        assert by_hand.valid == ("probe_test_by_hand",)  # found by columns, not by name
    finally:
        superuser(sandbox, "DROP INDEX probe_test_by_hand")


def test_table_statistics_and_settings(monitor: PostgresTarget) -> None:
    statistics = {t.table: t for t in probe.table_statistics(monitor)}
    assert set(statistics) == set(probe.CHAT_TABLES)
    agents = statistics["agents"]
    assert agents.live_rows >= 0
    assert agents.dead_rows >= 0
    assert agents.analyze_threshold == 50
    assert agents.autovacuum_enabled
    assert (agents.analyzed_age_s is None) == (agents.analyzed_at is None)

    settings = probe.settings(monitor, ["shared_buffers", "maintenance_work_mem"])
    assert settings["shared_buffers"].needs_restart
    assert not settings["maintenance_work_mem"].needs_restart
    shown = settings["maintenance_work_mem"].shown
    assert settings["maintenance_work_mem"].size_bytes == probe.size_bytes(shown)


def test_size_bytes_reads_postgres_sizes() -> None:
    assert probe.size_bytes("128MB") == 128 * 1024**2
    assert probe.size_bytes("4096", "8kB") == 4096 * 8 * 1024
    with pytest.raises(ValueError, match="not a size"):
        probe.size_bytes("lots")


def test_statement_statistics_and_stored_messages(monitor: PostgresTarget) -> None:
    stats = probe.statement_statistics(monitor, slowest=3)
    assert stats.version
    assert not stats.unreadable
    assert len(stats.slowest) <= 3
    assert probe.messages_stored_within(monitor, 10 * 365 * 86400) >= 0


def test_a_query_past_the_statement_timeout_is_not_evaluated(
    sandbox_inventory: Inventory,
) -> None:
    slow = PostgresTarget("chatdb", sandbox_inventory.postgres["chatdb"], 0.2)
    try:
        with pytest.raises(NotEvaluated, match=r"^postgres chatdb: no answer within"):
            probe._rows(slow, "SELECT pg_sleep(1)")
    finally:
        slow.close()
