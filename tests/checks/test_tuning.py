"""Tuning checks TUNE-001..004 fail on a really broken database and pass once it is restored;
their fixes (opsbook.remediation.tuning) are applied for real and are idempotent.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from support import RunChecks

from opsbook.inventory import load_inventory
from opsbook.remediate.context import Context
from opsbook.remediation import tuning
from opsbook.sandbox.stack import Stack

pytestmark = pytest.mark.sandbox


def superuser(sandbox: Stack, sql: str) -> str:
    return sandbox.component("postgres").psql(sql, database="chatdb")


def context(inventory_path: Path, check_id: str, **environ: str) -> Context:
    inventory = load_inventory(inventory_path, environ=environ)
    return Context(inventory, check_id, "postgres", "chatdb")


@pytest.mark.breaks("TUNE-001")
def test_missing_pg_stat_statements_fails(sandbox: Stack, run_checks: RunChecks) -> None:
    superuser(sandbox, "DROP EXTENSION pg_stat_statements")
    try:
        row = run_checks("--check=TUNE-001").row("TUNE-001")
    finally:
        superuser(sandbox, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    assert row["outcome"] == "failed"
    assert row["observed"] == "not installed"
    assert row["message"].startswith(
        "postgres chatdb: extension pg_stat_statements is not installed in chatdb"
    )
    row = run_checks("--check=TUNE-001").row("TUNE-001")
    assert row["outcome"] == "passed"
    assert " ms mean, " in row["evidence"]["slowest 5 statements by mean time"]


@pytest.mark.breaks("TUNE-001")
def test_pg_stat_statements_unreadable_fails(sandbox: Stack, run_checks: RunChecks) -> None:
    """Installed but not readable by the monitoring role (its SELECT revoked from PUBLIC)."""
    superuser(sandbox, "REVOKE SELECT ON pg_stat_statements FROM PUBLIC")
    try:
        row = run_checks("--check=TUNE-001").row("TUNE-001")
    finally:
        superuser(sandbox, "GRANT SELECT ON pg_stat_statements TO PUBLIC")
    assert row["outcome"] == "failed"
    assert row["observed"] == "not readable"
    assert "is installed but cannot be read as opsbook_monitor: " in row["message"]
    assert "permission denied" in row["message"]
    assert run_checks("--check=TUNE-001").exit_code == 0


@pytest.mark.breaks("TUNE-002")
def test_stale_statistics_fail_and_analyze_fixes_them(
    fresh_sandbox: Stack, run_checks: RunChecks
) -> None:
    """A table filled with autovacuum off is never analyzed; then, analyzed but changed since,
    its statistics are older than the (shortened) max age."""
    inventory = fresh_sandbox.inventory_path
    superuser(fresh_sandbox, "ALTER TABLE agents SET (autovacuum_enabled = off)")
    superuser(
        fresh_sandbox,
        "INSERT INTO agents (name, status, last_active)"
        " SELECT 'agent-' || n, 'idle', now() FROM generate_series(1, 500) AS n",
    )
    row = run_checks("--check=TUNE-002", inventory=inventory).row("TUNE-002")
    assert row["outcome"] == "failed"
    assert row["message"] == (
        "postgres chatdb: stale statistics: agents was never analyzed though 500 rows changed "
        "(autovacuum analyzes after 50)"
    )
    assert "agents: 500 live, 0 dead, 500 changed" in row["evidence"]["statistics"]

    ctx = context(inventory, "TUNE-002")
    plan = tuning.analyze_tables(ctx, apply=False)
    assert [step.command for step in plan.steps] == ["ANALYZE public.agents"]
    assert [step.kind for step in plan.steps] == ["maintenance"]
    assert tuning.analyze_tables(ctx, apply=True).applied
    again = tuning.analyze_tables(ctx, apply=True)
    assert again.nothing_to_do == "the statistics of agents, conversations, messages are fresh"
    assert not again.applied
    assert run_checks("--check=TUNE-002", inventory=inventory).exit_code == 0

    # Analyzed, then changed by more than autovacuum's threshold, and older than the max age.
    superuser(fresh_sandbox, "UPDATE agents SET status = 'busy' WHERE id <= 100")
    time.sleep(1.2)
    max_age = {"OPSBOOK__TUNING__STATS_MAX_AGE_S": "1"}
    row = run_checks("--check=TUNE-002", inventory=inventory, env=max_age).row("TUNE-002")
    assert row["outcome"] == "failed"
    assert (
        "agents was last analyzed 0.0 h ago and 100 rows changed since (max 1 s)"
        in (row["message"])
    )
    superuser(fresh_sandbox, "ALTER TABLE agents RESET (autovacuum_enabled)")


@pytest.mark.breaks("TUNE-003")
def test_dead_tuples_fail(sandbox: Stack, run_checks: RunChecks) -> None:
    superuser(sandbox, "ALTER TABLE agents SET (autovacuum_enabled = off)")
    try:
        superuser(
            sandbox,
            "INSERT INTO agents (name, status) SELECT 'doomed-' || n, 'idle'"
            " FROM generate_series(1, 300) AS n;"
            " DELETE FROM agents WHERE name LIKE 'doomed-%';",
        )
        row = run_checks("--check=TUNE-003").row("TUNE-003")
    finally:
        superuser(sandbox, "ALTER TABLE agents RESET (autovacuum_enabled)")
        superuser(sandbox, "VACUUM (ANALYZE) agents")
    assert row["outcome"] == "failed"
    # 300 and more: other tests on the shared sandbox may have left a dead row or two.
    assert re.match(r"postgres chatdb: agents has 3\d\d dead rows of \d+ ", row["message"])
    assert row["message"].endswith("(expected <= 20 % dead)")
    history = row["evidence"]["vacuum history"]
    assert '"table": "agents"' in history
    assert '"autovacuum_enabled": false' in history
    assert run_checks("--check=TUNE-003").exit_code == 0


@pytest.fixture
def reset_settings(sandbox: Stack):
    yield
    superuser(
        sandbox,
        "ALTER SYSTEM RESET maintenance_work_mem; ALTER SYSTEM RESET shared_buffers;"
        " SELECT pg_reload_conf();",
    )


def test_setting_mismatch_fails_and_apply_settings_sets_it(
    sandbox: Stack, run_checks: RunChecks, reset_settings: None
) -> None:
    expect = {
        "OPSBOOK__TUNING__MAINTENANCE_WORK_MEM": "96MB",
        "OPSBOOK__TUNING__EFFECTIVE_CACHE_SIZE": "4194304kB",  # 4GB, the running value
    }
    row = run_checks("--check=TUNE-004", env=expect).row("TUNE-004")
    assert row["outcome"] == "failed"
    assert row["message"] == "postgres chatdb: maintenance_work_mem is 64MB (expected 96MB)"
    assert row["observed"] == "effective_cache_size=4GB, maintenance_work_mem=64MB"

    ctx = context(sandbox.inventory_path, "TUNE-004", **expect)
    plan = tuning.apply_settings(ctx, apply=True)
    assert [(step.kind, step.command) for step in plan.steps] == [
        ("alter-system", "ALTER SYSTEM SET maintenance_work_mem = '96MB'"),
        ("alter-system", "SELECT pg_reload_conf()"),
    ]
    assert plan.applied
    assert run_checks("--check=TUNE-004", env=expect).exit_code == 0
    again = tuning.apply_settings(ctx, apply=True)
    assert again.nothing_to_do == (
        "effective_cache_size is 4GB, maintenance_work_mem is 96MB, as the inventory expects"
    )


def test_shared_buffers_waits_for_a_restart(
    sandbox: Stack, run_checks: RunChecks, reset_settings: None
) -> None:
    expect = {"OPSBOOK__TUNING__SHARED_BUFFERS": "64MB"}
    row = run_checks("--check=TUNE-004", env=expect).row("TUNE-004")
    assert row["message"] == "postgres chatdb: shared_buffers is 32MB (expected 64MB)"

    plan = tuning.apply_settings(context(sandbox.inventory_path, "TUNE-004", **expect), apply=True)
    # The reload only marks it pending restart; the plan says so and restarts nothing.
    alter, reload = plan.steps
    assert alter.command == "ALTER SYSTEM SET shared_buffers = '64MB'"
    assert alter.summary == (
        "set shared_buffers from 32MB to 64MB "
        "(takes effect only when PostgreSQL restarts, which this fix does not do)"
    )
    assert reload.summary == (
        "reload the configuration (shared_buffers: only marked pending restart, not applied)"
    )
    row = run_checks("--check=TUNE-004", env=expect).row("TUNE-004")
    assert row["outcome"] == "failed"
    assert row["message"] == (
        "postgres chatdb: shared_buffers is 32MB (expected 64MB), a new value waits for a restart"
    )


def test_unreadable_expectation_fails_clearly(sandbox: Stack, run_checks: RunChecks) -> None:
    row = run_checks("--check=TUNE-004", env={"OPSBOOK__TUNING__SHARED_BUFFERS": "lots"}).row(
        "TUNE-004"
    )
    assert row["outcome"] == "failed"
    assert row["message"] == (
        "postgres chatdb: inventory: tuning.shared_buffers: 'lots' is not a size like 256MB"
    )


@pytest.mark.breaks("TUNE-004")
def test_setting_lowered_on_the_server_fails_tune_004(
    sandbox: Stack, run_checks: RunChecks, reset_settings: None
) -> None:
    """The inventory expects the running maintenance_work_mem; then it is really lowered on the
    server (ALTER SYSTEM and a reload, as a hand edit of postgresql.conf would)."""
    running = superuser(sandbox, "SHOW maintenance_work_mem").strip()
    expect = {"OPSBOOK__TUNING__MAINTENANCE_WORK_MEM": running}
    assert run_checks("--check=TUNE-004", env=expect).exit_code == 0
    superuser(sandbox, "ALTER SYSTEM SET maintenance_work_mem = '16MB'; SELECT pg_reload_conf();")
    row = run_checks("--check=TUNE-004", env=expect).row("TUNE-004")
    assert row["outcome"] == "failed"
    assert f"maintenance_work_mem is 16MB (expected {running})" in row["message"], row["message"]
    superuser(sandbox, "ALTER SYSTEM RESET maintenance_work_mem; SELECT pg_reload_conf();")
    assert run_checks("--check=TUNE-004", env=expect).exit_code == 0
