"""PostgreSQL performance, from the tuning runbook: query statistics, table statistics, settings.

The runbook's indexes are DB-005 (checks/test_database.py).
"""

from __future__ import annotations

import pytest

from opsbook import Finding, Inventory, PostgresTarget, Severity, check
from opsbook.probes import postgres as probe
from opsbook.remediation import database, tuning

pytestmark = [pytest.mark.daily, pytest.mark.database]

SLOWEST = 5


@check("TUNE-001", Severity.MEDIUM)
def test_pg_stat_statements_is_available(postgres: PostgresTarget, finding: Finding) -> None:
    """pg_stat_statements is installed and readable by the monitoring role.

    Risk: without it the tuning runbook's first step, finding the slowest queries, is guesswork;
    a slow query is found only once users complain.
    """
    stats = probe.statement_statistics(postgres, SLOWEST)
    expected = "installed and readable"
    if stats.version is None:
        finding.observe("not installed", expected=expected)
        finding.fail(
            f"extension pg_stat_statements is not installed in {postgres.spec.database} "
            "(expected CREATE EXTENSION pg_stat_statements, with the library in "
            "shared_preload_libraries)"
        )
    finding.attach(
        f"slowest {SLOWEST} statements by mean time",
        "\n".join(
            f"{s.mean_ms} ms mean, {s.calls} calls, {s.total_ms} ms total, {s.rows} rows: {s.text}"
            for s in stats.slowest
        )
        or "no statements recorded yet",
    )
    finding.expect(
        "not readable" if stats.unreadable else f"version {stats.version}, readable", expected,
        ok=not stats.unreadable,
        problem=f"pg_stat_statements {stats.version} is installed but cannot be read as "
        f"{postgres.spec.user}: {stats.unreadable}",
    )  # fmt: skip


@check("TUNE-002", Severity.MEDIUM, remediation=tuning.analyze_tables)
def test_table_statistics_are_fresh(
    postgres: PostgresTarget, inventory: Inventory, finding: Finding
) -> None:
    """The chat tables' planner statistics are fresh.

    Risk: the planner chooses plans from what it believes the tables hold; with stale
    statistics it reads whole tables or picks the wrong join, and the chat slows down.
    """
    limit = inventory.tuning.stats_max_age_s
    statistics = probe.table_statistics(postgres)
    stale = tuning.stale_tables(statistics, limit)
    finding.attach("statistics", "\n".join(map(_described, statistics)))
    finding.observe(
        stale or "all fresh",
        expected=f"analyzed within {limit:g} s once more rows changed than autovacuum's threshold",
    )
    if stale:
        finding.fail("stale statistics: " + "; ".join(f"{t} {why}" for t, why in stale.items()))


def _described(t: probe.TableStatistics) -> str:
    analyzed = "never analyzed" if t.analyzed_at is None else f"analyzed {t.analyzed_at}"
    return (
        f"{t.table}: {t.live_rows} live, {t.dead_rows} dead, {t.changed_since_analyze} changed "
        f"since the last analyze ({analyzed})"
    )


@check("TUNE-003", Severity.MEDIUM, remediation=database.vacuum_analyze)
def test_dead_tuples_are_few(
    postgres: PostgresTarget, inventory: Inventory, finding: Finding
) -> None:
    """Dead rows make up less than the allowed share of each chat table.

    Risk: dead rows bloat the table and its indexes: every scan reads them, the cache holds
    them, and the disk fills; usually autovacuum is off, too slow, or held back by an old
    transaction.
    """
    limit = inventory.tuning.dead_tuple_percent
    statistics = probe.table_statistics(postgres)
    # Below autovacuum's base threshold a small table's share means nothing (1 of 2 rows).
    bloated = [
        f"{t.table} has {t.dead_rows} dead rows of {t.live_rows + t.dead_rows} "
        f"({t.dead_percent:.1f}%)"
        for t in statistics
        if t.dead_percent > limit and t.dead_rows > t.vacuum_threshold
    ]
    if bloated:
        finding.attach("vacuum history", statistics)
    finding.expect(
        {t.table: round(t.dead_percent, 1) for t in statistics}, f"<= {limit:g} % dead",
        ok=not bloated, problem="; ".join(bloated),
    )  # fmt: skip


@check("TUNE-004", Severity.LOW, remediation=tuning.apply_settings)
def test_memory_settings_match_the_runbook(
    postgres: PostgresTarget, inventory: Inventory, finding: Finding
) -> None:
    """shared_buffers, effective_cache_size and maintenance_work_mem are as the inventory expects.

    Risk: too little shared_buffers or maintenance_work_mem makes queries and VACUUM slow; a
    wrong effective_cache_size misleads the planner; too much memory risks the OOM killer.
    """
    expected = tuning.expected_settings(inventory.tuning)
    if not expected:
        pytest.skip("the inventory's tuning section sets no memory setting")
    current = probe.settings(postgres, tuning.SETTINGS)
    finding.attach("settings", current)
    try:
        different = tuning.mismatches(expected, current)
    except ValueError as exc:
        finding.observe("cannot compare", expected="sizes like 256MB in the inventory")
        finding.fail(f"inventory: {exc}")
    finding.observe(
        ", ".join(f"{name}={current[name].shown}" for name in expected),
        expected=", ".join(f"{name}={value}" for name, value in expected.items()),
    )
    if different:
        finding.fail(
            "; ".join(
                f"{name} is {current[name].shown} (expected {expected[name]})"
                + (", a new value waits for a restart" if current[name].pending_restart else "")
                for name in different
            )
        )
