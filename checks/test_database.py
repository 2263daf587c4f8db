"""PostgreSQL: the runbook's `pg_isready`, connection use, stuck transactions, the schema."""

from __future__ import annotations

import pytest

from opsbook import Severity, TargetUnreachable, check
from opsbook.targets import PostgresTarget
from remediation import database, services

pytestmark = [pytest.mark.daily, pytest.mark.database]

CHATDB_TABLES = ("agents", "conversations", "messages")


@pytest.mark.postdeploy
@pytest.mark.predeploy
@check("DB-001", Severity.CRITICAL, remediation=services.restart_service)
def test_postgres_accepts_connections(postgres_target: PostgresTarget, finding) -> None:
    """PostgreSQL accepts connections as the monitoring role.

    Risk: the backend cannot store or read messages.
    """
    try:
        (answer,) = postgres_target.query("SELECT 1")[0]
    except TargetUnreachable as exc:
        finding.observe("refused", expected="accepting")
        raise AssertionError(f"postgres {postgres_target.name}: {exc.reason}") from None
    finding.observe("accepting", expected="accepting")
    assert answer == 1, f"postgres {postgres_target.name}: SELECT 1 returned {answer!r}"


@check("DB-002", Severity.HIGH)
def test_connections_below_limit(postgres: PostgresTarget, thresholds, finding) -> None:
    """PostgreSQL connections in use stay below the share of max_connections allowed.

    Risk: when the limit is reached, new connections are refused and the backend fails.
    """
    ((in_use, limit),) = postgres.query(
        "SELECT count(*), current_setting('max_connections')::int FROM pg_stat_activity"
        " WHERE backend_type = 'client backend'"
    )
    percent = 100.0 * in_use / limit
    allowed = thresholds.pg_connections_percent
    finding.observe(f"{in_use}/{limit} ({percent:.0f}%)", expected=f"<= {allowed:g}%")
    if percent > allowed:
        finding.attach(
            "connections by role and state",
            postgres.query(
                "SELECT usename, state, count(*) FROM pg_stat_activity"
                " WHERE backend_type = 'client backend' GROUP BY 1, 2 ORDER BY 3 DESC"
            ),
        )
    assert percent <= allowed, (
        f"postgres {postgres.name}: {in_use} of {limit} connections in use "
        f"({percent:.0f}%, max {allowed:g}%)"
    )


@check("DB-003", Severity.HIGH, remediation=database.end_idle_transactions)
def test_no_long_idle_transactions(postgres: PostgresTarget, thresholds, finding) -> None:
    """No session sits idle in a transaction for too long.

    Risk: an open transaction holds locks and stops VACUUM; tables bloat and writes block.
    """
    limit = thresholds.idle_in_transaction_s
    stuck = postgres.query(
        "SELECT pid, usename, application_name,"
        " round(extract(epoch FROM now() - state_change))::int AS idle_s,"
        " left(query, 120) FROM pg_stat_activity"
        " WHERE state LIKE 'idle in transaction%%'"
        " AND now() - state_change > make_interval(secs => %s) ORDER BY idle_s DESC",
        (limit,),
    )
    finding.observe(len(stuck), expected=0)
    if stuck:
        finding.attach("sessions (pid, user, application, idle s, last query)", stuck)
    assert not stuck, (
        f"postgres {postgres.name}: {len(stuck)} session(s) idle in transaction for more than "
        f"{limit:g}s, the longest {stuck[0][3]}s (pid {stuck[0][0]}, user {stuck[0][1]})"
        if stuck
        else ""
    )


@pytest.mark.postdeploy
@pytest.mark.predeploy
@check("DB-004", Severity.CRITICAL)
def test_chatdb_tables_exist(postgres: PostgresTarget, finding) -> None:
    """The chat database has its tables: messages, conversations, agents.

    Risk: a failed migration or a restore into the wrong database loses every chat.
    """
    present = {
        name
        for (name,) in postgres.query(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')"
        )
    }
    missing = [table for table in CHATDB_TABLES if table not in present]
    finding.observe(sorted(present & set(CHATDB_TABLES)), expected=list(CHATDB_TABLES))
    assert not missing, (
        f"postgres {postgres.name}: missing table(s) {', '.join(missing)} "
        f"in {postgres.spec.database}"
    )


@check("DB-005", Severity.MEDIUM, remediation=database.create_indexes)
def test_tuning_indexes_exist(postgres: PostgresTarget, finding) -> None:
    """The tuning runbook's indexes exist.

    Risk: without them, a user's conversations, recent messages and active agents are found by
    reading whole tables; the chat slows down as the data grows.
    """
    rows = postgres.query(database.INDEXES_SQL, database.index_query_params())
    states = database.index_states(rows)
    finding.observe(
        "; ".join(state.index.describe() for state in states if state.present),
        expected="; ".join(state.index.describe() for state in states),
    )
    problems = []
    for state in states:
        if state.present:
            continue
        what = state.index.describe()
        if state.building:
            building = ", ".join(f"{name} by pid {pid}" for name, pid in state.building)
            problems.append(f"{what} is still being built ({building})")
        elif state.invalid:
            problems.append(
                f"{what} is INVALID, left by a failed concurrent build ({', '.join(state.invalid)})"
            )
        else:
            problems.append(f"{what} has no index")
    if problems:
        finding.attach("b-tree indexes (table, index, valid, columns, pid building it)", rows)
    assert not problems, f"postgres {postgres.name}: " + "; ".join(problems)
