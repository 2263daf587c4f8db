"""PostgreSQL: the runbook's `pg_isready`, connection use, stuck transactions, the schema."""

from __future__ import annotations

import pytest

from opsbook import Finding, PostgresTarget, Severity, Thresholds, Unit, check
from opsbook.probes import postgres as probe
from opsbook.probes.health import postgres_select_one
from opsbook.remediation import database, services

pytestmark = [pytest.mark.daily, pytest.mark.database]


@pytest.mark.postdeploy
@pytest.mark.predeploy
@check("DB-001", Severity.CRITICAL, remediation=services.restart_service)
def test_postgres_accepts_connections(postgres_target: PostgresTarget, finding: Finding) -> None:
    """PostgreSQL accepts connections as the monitoring role.

    Risk: the backend cannot store or read messages.
    """
    reply = postgres_select_one(postgres_target)
    shown = "accepting" if reply.answered else "refused"
    finding.expect(shown, "accepting", ok=reply.answered, problem=reply.reason)


@check("DB-002", Severity.HIGH, remediation=database.end_idle_sessions)
def test_connections_below_limit(
    postgres: PostgresTarget, thresholds: Thresholds, finding: Finding
) -> None:
    """PostgreSQL connections in use stay below the share of max_connections allowed.

    Risk: when the limit is reached, new connections are refused and the backend fails.
    """
    use, allowed = probe.connection_use(postgres), thresholds.pg_connections_percent
    ok = use.used_percent <= allowed
    if not ok:
        finding.attach("connections by role and state", probe.connections_by_role(postgres))
    finding.expect(
        round(use.used_percent, 1), f"<= {allowed:g} %", ok=ok, unit=Unit.PERCENT,
        problem=f"{use.in_use} of {use.max_connections} connections in use "
        f"({use.used_percent:.0f} %)",
    )  # fmt: skip


@check("DB-003", Severity.HIGH, remediation=database.end_idle_transactions)
def test_no_long_idle_transactions(
    postgres: PostgresTarget, thresholds: Thresholds, finding: Finding
) -> None:
    """No session sits idle in a transaction for too long.

    Risk: an open transaction holds locks and stops VACUUM; tables bloat and writes block.
    """
    limit = thresholds.idle_in_transaction_s
    stuck = probe.idle_transactions(postgres, limit)
    problem = None
    if stuck:
        finding.attach("sessions idle in transaction", stuck)
        problem = (
            f"{len(stuck)} session(s) idle in transaction for more than {limit:g} s, the longest "
            f"{stuck[0].idle_s} s (pid {stuck[0].pid}, user {stuck[0].user})"
        )
    finding.expect(len(stuck), "0", ok=not stuck, unit=Unit.COUNT, problem=problem)


@pytest.mark.postdeploy
@pytest.mark.predeploy
@check("DB-004", Severity.CRITICAL)
def test_chatdb_tables_exist(postgres: PostgresTarget, finding: Finding) -> None:
    """The chat database has its tables: messages, conversations, agents.

    Risk: a failed migration or a restore into the wrong database loses every chat.
    """
    present = probe.tables(postgres)
    missing = [table for table in probe.CHAT_TABLES if table not in present]
    finding.expect(
        sorted(present & set(probe.CHAT_TABLES)), ", ".join(probe.CHAT_TABLES), ok=not missing,
        problem=f"missing table(s) {', '.join(missing)} in {postgres.spec.database}",
    )  # fmt: skip


@check("DB-005", Severity.MEDIUM, remediation=database.create_indexes)
def test_tuning_indexes_exist(postgres: PostgresTarget, finding: Finding) -> None:
    """The tuning runbook's indexes exist.

    Risk: without them, a user's conversations, recent messages and active agents are found by
    reading whole tables; the chat slows down as the data grows.
    """
    wanted = database.TUNING_INDEXES
    found = probe.btree_indexes(postgres, {index.table for index in wanted})
    states = probe.index_states(found, wanted)
    problems = [database.index_problem(state) for state in states if not state.present]
    if problems:
        finding.attach("b-tree indexes", found)
    finding.observe(
        "; ".join(state.index.describe() for state in states if state.present),
        expected="; ".join(index.describe() for index in wanted),
    )
    if problems:
        finding.fail("; ".join(problems))
