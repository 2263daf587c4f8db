"""PostgreSQL performance, from the tuning runbook: query statistics, table statistics, settings.

The runbook's indexes are DB-005 (checks/test_database.py).
"""

from __future__ import annotations

import pytest

from opsbook import Severity, check
from opsbook.targets import PostgresTarget
from remediation import database, tuning

pytestmark = [pytest.mark.daily, pytest.mark.database]

SLOWEST = 5


@check("TUNE-001", Severity.MEDIUM)
def test_pg_stat_statements_is_available(postgres: PostgresTarget, finding) -> None:
    """pg_stat_statements is installed and readable by the monitoring role.

    Risk: without it the tuning runbook's first step, finding the slowest queries, is guesswork;
    a slow query is found only once users complain.
    """
    where = f"postgres {postgres.name}"
    installed = postgres.query(
        "SELECT extversion FROM pg_extension WHERE extname = 'pg_stat_statements'"
    )
    if not installed:
        finding.observe("not installed", expected="installed and readable")
        raise AssertionError(
            f"{where}: extension pg_stat_statements is not installed in {postgres.spec.database} "
            "(expected CREATE EXTENSION pg_stat_statements, with the library in "
            "shared_preload_libraries)"
        )
    try:
        slowest = postgres.query(
            "SELECT round(mean_exec_time::numeric, 3) AS mean_ms, calls,"
            " round(total_exec_time::numeric, 1) AS total_ms, rows,"
            " left(regexp_replace(query, '\\s+', ' ', 'g'), 200)"
            " FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " ORDER BY mean_exec_time DESC LIMIT %s",
            (SLOWEST,),
        )
    except Exception as exc:  # psycopg.Error; the driver is imported only when a check runs
        if not type(exc).__module__.startswith("psycopg"):
            raise
        # Installed but not loaded (shared_preload_libraries), or no SELECT for this role.
        finding.observe("not readable", expected="installed and readable")
        reason = str(exc).strip().splitlines()[0]
        raise AssertionError(
            f"{where}: pg_stat_statements {installed[0][0]} is installed but cannot be read "
            f"as {postgres.spec.user}: {reason}"
        ) from None
    finding.observe(f"version {installed[0][0]}, readable", expected="installed and readable")
    finding.attach(
        f"slowest {SLOWEST} statements by mean time",
        "\n".join(
            f"{mean} ms mean, {calls} calls, {total} ms total, {rows} rows: {text}"
            for mean, calls, total, rows, text in slowest
        )
        or "no statements recorded yet",
    )


@check("TUNE-002", Severity.MEDIUM, remediation=tuning.analyze_tables)
def test_table_statistics_are_fresh(postgres: PostgresTarget, inventory, finding) -> None:
    """The chat tables' planner statistics are fresh.

    Risk: the planner chooses plans from what it believes the tables hold; with stale
    statistics it reads whole tables or picks the wrong join, and the chat slows down.
    """
    limit = inventory.tuning.stats_max_age_s
    rows = postgres.query(tuning.TABLE_STATISTICS_SQL, tuning.table_statistics_params())
    stale = tuning.stale_tables(rows, limit)
    finding.observe(
        stale or "all fresh",
        expected=f"analyzed within {limit:g} s once more rows changed than autovacuum's threshold",
    )
    finding.attach(
        "statistics",
        "\n".join(
            f"{table}: {live} live, {dead} dead, {changed} changed since the last analyze "
            f"({'never analyzed' if analyzed is None else f'analyzed {analyzed}'})"
            for table, live, dead, changed, analyzed, *_ in rows
        ),
    )
    assert not stale, f"postgres {postgres.name}: stale statistics: " + "; ".join(
        f"{table} {reason}" for table, reason in stale.items()
    )


@check("TUNE-003", Severity.MEDIUM, remediation=database.vacuum_analyze)
def test_dead_tuples_are_few(postgres: PostgresTarget, inventory, finding) -> None:
    """Dead rows make up less than the allowed share of each chat table.

    Risk: dead rows bloat the table and its indexes: every scan reads them, the cache holds
    them, and the disk fills; usually autovacuum is off, too slow, or held back by an old
    transaction.
    """
    limit = inventory.tuning.dead_tuple_percent
    rows = postgres.query(tuning.TABLE_STATISTICS_SQL, tuning.table_statistics_params())
    shares = {}
    bloated = []
    for table, live, dead, _, _, _, _, vacuum_threshold in rows:
        percent = 100.0 * dead / (live + dead) if live + dead else 0.0
        shares[table] = f"{percent:.1f}% ({dead} of {live + dead})"
        # Below autovacuum's base threshold a small table's share means nothing (1 of 2 rows).
        if percent > limit and dead > vacuum_threshold:
            bloated.append(f"{table} has {dead} dead rows of {live + dead} ({percent:.1f}%)")
    finding.observe(shares, expected=f"<= {limit:g}% dead")
    if bloated:
        finding.attach(
            "vacuum history (table, last vacuum, last autovacuum, autovacuum enabled)",
            postgres.query(
                "SELECT s.relname, s.last_vacuum, s.last_autovacuum,"
                " coalesce(c.reloptions::text, '') NOT LIKE '%%autovacuum_enabled=false%%'"
                " FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid"
                " WHERE s.schemaname = 'public' AND s.relname = ANY(%s) ORDER BY 1",
                (list(database.CHATDB_TABLES),),
            ),
        )
    assert not bloated, f"postgres {postgres.name}: " + "; ".join(bloated) + f" (max {limit:g}%)"


@check("TUNE-004", Severity.LOW, remediation=tuning.apply_settings)
def test_memory_settings_match_the_runbook(postgres: PostgresTarget, inventory, finding) -> None:
    """shared_buffers, effective_cache_size and maintenance_work_mem are as the inventory expects.

    Risk: too little shared_buffers or maintenance_work_mem makes queries and VACUUM slow; a
    wrong effective_cache_size misleads the planner; too much memory risks the OOM killer.
    """
    expected = tuning.expected_settings(inventory.tuning)
    current = tuning.current_settings(postgres.query(tuning.SETTINGS_SQL, (list(tuning.SETTINGS),)))
    finding.attach(
        "settings",
        {
            name: setting.shown
            + (" (a new value waits for a restart)" if setting.pending_restart else "")
            for name, setting in current.items()
        },
    )
    if not expected:
        # Nothing to compare: the inventory leaves these to the deployment (not a failure).
        finding.observe(
            {name: setting.shown for name, setting in current.items()},
            expected="no expectations in the inventory's tuning section",
        )
        return
    try:
        different = tuning.mismatches(expected, current)
    except ValueError as exc:
        finding.observe("cannot compare", expected="sizes like 256MB in the inventory")
        raise AssertionError(f"postgres {postgres.name}: inventory: {exc}") from None
    finding.observe(
        ", ".join(f"{name}={current[name].shown}" for name in expected),
        expected=", ".join(f"{name}={value}" for name, value in expected.items()),
    )
    assert not different, f"postgres {postgres.name}: " + "; ".join(
        f"{name} is {current[name].shown} (expected {expected[name]})"
        + (", a new value waits for a restart" if current[name].pending_restart else "")
        for name in different
    )
