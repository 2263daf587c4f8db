"""Database remediations on a really broken sandbox: each check fails, the fix is planned (and
nothing changes), applied (the check passes again: FIXED), and a second application has
nothing to do.
"""

from __future__ import annotations

import time

import psycopg
import pytest
from support import RunChecks, eventually

from opsbook.inventory import load_inventory
from opsbook.remediate.context import Context
from opsbook.remediation import database
from opsbook.sandbox.process import ComponentError
from opsbook.sandbox.stack import Stack

pytestmark = pytest.mark.sandbox

IDLE_LIMIT = {"OPSBOOK__THRESHOLDS__IDLE_IN_TRANSACTION_S": "1"}


def chatdb_context(stack: Stack, check_id: str, env: dict[str, str] | None = None) -> Context:
    """The context the plugin would give a fix of a failing check on postgres `chatdb`."""
    return Context(load_inventory(stack.inventory_path, environ=env or {}), check_id,
                   "postgres", "chatdb")  # fmt: skip


def app_connection(stack: Stack) -> psycopg.Connection[tuple[object, ...]]:
    password = (stack.dir / "secrets" / "chat_app.password").read_text().strip()
    return psycopg.connect(
        host="127.0.0.1", port=stack.state.ports["postgres"], dbname="chatdb",
        user="chat_app", password=password, connect_timeout=3,
    )  # fmt: skip


def superuser(stack: Stack, sql: str) -> str:
    return stack.component("postgres").psql(sql, database="chatdb").strip()


# DB-003: end_idle_transactions


@pytest.mark.breaks("DB-003")
@pytest.mark.fixes("DB-003")
def test_idle_transaction_is_ended(sandbox: Stack, run_checks: RunChecks) -> None:
    connection = app_connection(sandbox)
    try:
        connection.execute("SELECT count(*) FROM messages")  # opens the transaction
        pid = connection.info.backend_pid
        time.sleep(1.5)

        planned = run_checks("--check=DB-003", "--remediate=plan", env=IDLE_LIMIT)
        attempt = planned.row("DB-003")["remediation_attempt"]
        assert attempt["status"] == "planned", planned.output
        (step,) = attempt["plan"]
        assert step.startswith("[end-sessions] end 1 session(s) idle in transaction for more ")
        assert f"pid {pid} (chat_app@chatdb, " in step
        assert "pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE " in step
        assert f"AND pid IN ({pid})" in step
        alive = f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"
        assert superuser(sandbox, alive) == "1"

        refused = run_checks("--check=DB-003", "--remediate=apply", env=IDLE_LIMIT)
        attempt = refused.row("DB-003")["remediation_attempt"]
        assert attempt["status"] == "refused"
        assert "--allow=end-sessions" in attempt["reason"]
        assert superuser(sandbox, alive) == "1"

        run = run_checks(
            "--check=DB-003", "--remediate=apply", "--allow=end-sessions", env=IDLE_LIMIT
        )
        row = run.row("DB-003")
        assert row["outcome"] == "fixed", run.output
        assert "user chat_app" in row["message"]  # the failure it started from
        attempt = row["remediation_attempt"]
        assert (attempt["status"], attempt["verdict"], attempt["after"]) == (
            "applied", "FIXED", "passed",
        )  # fmt: skip
        assert attempt["plan"][0].endswith(f"-> ended 1 of 1: pids [{pid}]")
        assert superuser(sandbox, alive) == "0"
        with pytest.raises(psycopg.OperationalError):
            connection.execute("SELECT 1")

        again = database.end_idle_transactions(
            chatdb_context(sandbox, "DB-003", IDLE_LIMIT), apply=True
        )
        assert again.nothing_to_do == "no session idle in transaction for more than 1s"
        assert not again.applied
    finally:
        connection.close()


# vacuum_analyze (not linked to a check yet: called as the plugin would call it)


def test_vacuum_analyze_vacuums_only_what_needs_it(sandbox: Stack) -> None:
    ctx = chatdb_context(sandbox, "DB-004")
    database.vacuum_analyze(ctx, apply=True)  # whatever earlier tests left
    superuser(
        sandbox,
        "INSERT INTO agents (name) SELECT 'opsbook-vacuum-test' FROM generate_series(1, 20);"
        "DELETE FROM agents WHERE name = 'opsbook-vacuum-test';",
    )
    vacuums = "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'agents'"
    before = superuser(sandbox, vacuums)

    def agents_listed() -> bool:
        """the plan lists agents (its statistics reached pg_stat_user_tables)"""
        return any("agents" in line for line in database.vacuum_analyze(ctx, apply=False).lines())

    eventually(agents_listed)
    plan = database.vacuum_analyze(ctx, apply=False)
    (step,) = plan.lines()
    assert step.startswith("[maintenance] vacuum and analyze agents: 20 dead row(s), ")
    assert step.endswith(": VACUUM (ANALYZE) public.agents")
    assert superuser(sandbox, vacuums) == before  # planning changed nothing

    done = database.vacuum_analyze(ctx, apply=True)
    assert done.applied
    assert done.lines() == [f"{step} -> done"]
    assert int(superuser(sandbox, vacuums)) == int(before) + 1

    again = database.vacuum_analyze(ctx, apply=True)
    assert again.nothing_to_do == (
        "agents, conversations, messages: no dead rows, statistics up to date"
    )


# DB-005: create_indexes


RESTORE_INDEXES = """
CREATE INDEX IF NOT EXISTS idx_messages_timestamp ON messages ("timestamp");
CREATE INDEX IF NOT EXISTS idx_conversations_user_id ON conversations (user_id);
CREATE INDEX IF NOT EXISTS idx_agents_status_last_active ON agents (status, last_active);
"""
INDEX_EXISTS = "SELECT count(*) FROM pg_indexes WHERE indexname = 'idx_conversations_user_id'"


@pytest.mark.breaks("DB-005")
@pytest.mark.fixes("DB-005")
def test_missing_index_is_created(sandbox: Stack, run_checks: RunChecks) -> None:
    superuser(sandbox, "DROP INDEX idx_conversations_user_id")
    try:
        planned = run_checks("--check=DB-005", "--remediate=plan")
        row = planned.row("DB-005")
        assert row["outcome"] == "failed", planned.output
        assert row["message"] == "postgres chatdb: conversations(user_id) has no index"
        assert row["observed"] == "messages(timestamp); agents(status, last_active)"
        assert row["remediation_attempt"]["plan"] == [
            "[create-index] create index idx_conversations_user_id on conversations(user_id): "
            "SET lock_timeout = '30s'; CREATE INDEX CONCURRENTLY IF NOT EXISTS "
            'idx_conversations_user_id ON public.conversations ("user_id")'
        ]
        assert superuser(sandbox, INDEX_EXISTS) == "0"

        run = run_checks("--check=DB-005", "--remediate=apply")
        row = run.row("DB-005")
        assert row["outcome"] == "fixed", run.output
        attempt = row["remediation_attempt"]
        assert (attempt["status"], attempt["verdict"]) == ("applied", "FIXED")
        assert attempt["plan"][0].endswith(' ON public.conversations ("user_id") -> done')
        assert superuser(sandbox, INDEX_EXISTS) == "1"

        again = database.create_indexes(chatdb_context(sandbox, "DB-005"), apply=True)
        assert again.nothing_to_do == "the tuning runbook's indexes exist"
        assert run_checks("--check=DB-005").exit_code == 0
    finally:
        superuser(sandbox, RESTORE_INDEXES)


@pytest.mark.breaks("DB-005")
def test_invalid_index_is_rebuilt(sandbox: Stack, run_checks: RunChecks) -> None:
    """A unique concurrent build over duplicate rows fails, as a concurrent build does when it
    is cancelled or times out: it leaves an INVALID index under the runbook's name."""
    superuser(
        sandbox,
        "DROP INDEX idx_agents_status_last_active;"
        "INSERT INTO agents (name, status, last_active) VALUES"
        " ('opsbook-index-test', 'idle', '2024-01-01'),"
        " ('opsbook-index-test', 'idle', '2024-01-01');",
    )
    try:
        with pytest.raises(ComponentError):
            superuser(
                sandbox,
                "CREATE UNIQUE INDEX CONCURRENTLY idx_agents_status_last_active"
                " ON agents (status, last_active)",
            )
        run = run_checks("--check=DB-005", "--remediate=apply")
        row = run.row("DB-005")
        assert row["outcome"] == "fixed", run.output
        assert row["message"] == (
            "postgres chatdb: agents(status, last_active) is INVALID, left by a failed "
            "concurrent build (idx_agents_status_last_active)"
        )
        drop, create = row["remediation_attempt"]["plan"]
        assert drop == (
            "[create-index] drop idx_agents_status_last_active, the INVALID leftover of a "
            "failed concurrent build of agents(status, last_active): SET lock_timeout = '30s'; "
            "DROP INDEX CONCURRENTLY IF EXISTS public.idx_agents_status_last_active -> done"
        )
        assert create.startswith("[create-index] create index idx_agents_status_last_active ")
        assert (
            superuser(
                sandbox,
                "SELECT indisvalid, indisunique FROM pg_index"
                " WHERE indexrelid = 'idx_agents_status_last_active'::regclass",
            )
            == "t|f"
        )
    finally:
        superuser(
            sandbox,
            "DELETE FROM agents WHERE name = 'opsbook-index-test';"
            "DROP INDEX IF EXISTS idx_agents_status_last_active;" + RESTORE_INDEXES,
        )


@pytest.mark.breaks("DB-005")
def test_index_name_taken_by_another_index_fails_loudly(
    sandbox: Stack, run_checks: RunChecks
) -> None:
    """IF NOT EXISTS would do nothing: the fix says why instead of pretending."""
    superuser(
        sandbox,
        "DROP INDEX idx_conversations_user_id;"
        "CREATE INDEX idx_conversations_user_id ON conversations (created_at);",
    )
    try:
        run = run_checks("--check=DB-005", "--remediate=apply")
        row = run.row("DB-005")
        assert row["outcome"] == "failed"
        attempt = row["remediation_attempt"]
        assert attempt["status"] == "failed"
        assert attempt["reason"] == (
            "planning failed: RuntimeError: the name(s) idx_conversations_user_id are taken by "
            "other relations in public; rename or drop them by hand, then run the fix again"
        )
    finally:
        superuser(sandbox, "DROP INDEX IF EXISTS idx_conversations_user_id;" + RESTORE_INDEXES)


# DB-001: restart_service (opsbook.remediation.services), proven on the database


@pytest.mark.breaks("DB-001")
@pytest.mark.fixes("DB-001")
def test_stopped_postgres_is_restarted(fresh_sandbox: Stack, run_checks: RunChecks) -> None:
    """A fresh sandbox: while PostgreSQL is down the backend logs errors, which would fail
    LOG-001 on the shared sandbox for the next five minutes."""
    stack = fresh_sandbox
    inventory = stack.inventory_path
    dependents = {name: stack.component(name).pid() for name in ("backend", "worker")}
    stack.stop("postgres")

    planned = run_checks("--check=DB-001", "--remediate=plan", inventory=inventory)
    assert planned.row("DB-001", "chatdb")["remediation_attempt"]["status"] == "planned"
    assert not stack.component("postgres").is_running()

    run = run_checks("--check=DB-001", "--remediate=apply", "--allow=restart", inventory=inventory)
    row = run.row("DB-001", "chatdb")
    assert row["outcome"] == "fixed", run.output
    attempt = row["remediation_attempt"]
    assert (attempt["status"], attempt["verdict"]) == ("applied", "FIXED")
    assert attempt["plan"][0] == (
        "[restart] restart postgres, which serves chatdb: python -m opsbook sandbox restart "
        f"postgres --dir {stack.dir} -> healthy"
    )
    assert attempt["plan"][1].endswith("-> not needed")  # no recreate
    # The cause is restarted, not what depends on it.
    assert {name: stack.component(name).pid() for name in dependents} == dependents

    health = run_checks("--check=HEALTH-001", inventory=inventory)
    assert health.outcome("HEALTH-001", "backend") == "passed", health.output
