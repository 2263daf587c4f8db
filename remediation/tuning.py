"""PostgreSQL: the performance-tuning runbook's fixes (planner statistics, memory settings).

Both connect as the inventory's admin role of the failing target (`ctx.postgres_admin()`,
autocommit). The check and its fix share the decision (what is stale, what mismatches), so a
fix never does less or more than the check asked for.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from opsbook.inventory import Tuning
from opsbook.probes import postgres as probe
from opsbook.probes.postgres import Setting, TableStatistics, size_bytes
from opsbook.remediate.context import Context
from opsbook.remediate.plan import Plan, StepKind


def stale_tables(statistics: Iterable[TableStatistics], max_age_s: float) -> dict[str, str]:
    """The tables whose statistics no longer describe them, with the reason (TUNE-002's verdict).

    Stale: more rows changed since the last analyze than autovacuum's own analyze threshold,
    and that analyze is older than `max_age_s` or never happened. A table never analyzed but
    (nearly) empty has nothing to describe yet and is fresh; a table analyzed long ago that has
    not changed since still has exact statistics and is fresh.
    """
    stale = {}
    for table in statistics:
        changed, threshold = table.changed_since_analyze, table.analyze_threshold
        if changed <= threshold:
            continue
        if table.analyzed_age_s is None:
            stale[table.table] = (
                f"was never analyzed though {changed} rows changed "
                f"(autovacuum analyzes after {threshold})"
            )
        elif table.analyzed_age_s > max_age_s:
            stale[table.table] = (
                f"was last analyzed {table.analyzed_age_s / 3600:.1f} h ago and {changed} rows "
                f"changed since (max {max_age_s:g} s)"
            )
    return stale


def analyze_tables(ctx: Context, *, apply: bool) -> Plan:
    """ANALYZE the chat tables whose planner statistics are stale (TUNE-002's verdict).

    Changes: refreshes the planner's statistics of each stale table (reads a sample of the
    table; takes a SHARE UPDATE EXCLUSIVE lock: reads and writes go on, DDL waits). Query plans
    may change afterwards, which is the point.
    Privileges: the admin role, owner of the tables.
    Undo: nothing to undo; running it again is harmless.
    """
    plan = Plan.for_fix(ctx)
    max_age_s = ctx.inventory.tuning.stats_max_age_s
    with ctx.postgres_admin() as connection:

        def run(sql: str) -> None:
            connection.execute(sql)

        stale = stale_tables(probe.table_statistics(connection), max_age_s)
        if not stale:
            return plan.nothing(f"the statistics of {', '.join(probe.CHAT_TABLES)} are fresh")
        for table, reason in stale.items():
            sql = f"ANALYZE public.{table}"
            plan.add(
                f"analyze {table}: it {reason}",
                sql,
                StepKind.MAINTENANCE,
                functools.partial(run, sql),
            )
        return plan.finish(apply, ctx.gate)


# The memory settings of the runbook, compared by size (SHOW prints "128MB", the inventory may
# say "131072kB": the same value).

SETTINGS = ("shared_buffers", "effective_cache_size", "maintenance_work_mem")


def expected_settings(tuning: Tuning) -> dict[str, str]:
    """The settings the inventory sets (None: not checked)."""
    wanted = {name: getattr(tuning, name) for name in SETTINGS}
    return {name: str(value) for name, value in wanted.items() if value is not None}


def mismatches(expected: dict[str, str], current: dict[str, Setting]) -> list[str]:
    """The names whose running value differs from the expected size (ValueError: an expected
    value that is not a size, naming the setting)."""
    different = []
    for name, value in expected.items():
        try:
            wanted = size_bytes(value)
        except ValueError as exc:
            raise ValueError(f"tuning.{name}: {exc}") from None
        if current[name].size_bytes != wanted:
            different.append(name)
    return different


def apply_settings(ctx: Context, *, apply: bool) -> Plan:
    """Set each memory setting that differs from the inventory with ALTER SYSTEM, then reload.

    Changes: ALTER SYSTEM SET writes postgresql.auto.conf, which overrides postgresql.conf;
    pg_reload_conf() applies effective_cache_size and maintenance_work_mem (to every session, at
    its next command). shared_buffers is read only at server start: this fix writes it and the
    reload marks it pending restart, but it does not restart PostgreSQL, so TUNE-004 keeps
    failing ("waits for a restart") until a person restarts it in a maintenance window (and
    applying the fix again writes the same value again).
    Privileges: ALTER SYSTEM on these parameters (a superuser, or on PostgreSQL 15 and later
    `GRANT ALTER SYSTEM ON PARAMETER shared_buffers, effective_cache_size,
    maintenance_work_mem TO <admin>`) and EXECUTE on pg_reload_conf() (superuser by default;
    `GRANT EXECUTE ON FUNCTION pg_reload_conf() TO <admin>` in the checked database).
    Undo: `ALTER SYSTEM RESET <name>` and pg_reload_conf() (a restart for shared_buffers).
    """
    plan = Plan.for_fix(ctx)
    expected = expected_settings(ctx.inventory.tuning)
    if not expected:
        return plan.nothing("the inventory's tuning section sets no memory setting")
    with ctx.postgres_admin() as connection:

        def run(sql: str) -> None:
            connection.execute(sql)

        current = probe.settings(connection, SETTINGS)
        different = mismatches(expected, current)
        if not different:
            return plan.nothing(
                ", ".join(f"{name} is {current[name].shown}" for name in expected)
                + ", as the inventory expects"
            )
        for name in different:
            value = expected[name]  # a size (mismatches checked it): safe to quote as is
            sql = f"ALTER SYSTEM SET {name} = '{value.strip()}'"
            when = (
                "takes effect only when PostgreSQL restarts, which this fix does not do"
                if current[name].needs_restart
                else "takes effect at the reload"
            )
            plan.add(
                f"set {name} from {current[name].shown} to {value} ({when})",
                sql,
                StepKind.ALTER_SYSTEM,
                functools.partial(run, sql),
            )
        applied = [name for name in different if not current[name].needs_restart]
        waiting = [name for name in different if current[name].needs_restart]
        # Reloaded even for shared_buffers alone: it then shows as pending_restart, which
        # TUNE-004 reports ("waits for a restart"), instead of the old value without a hint.
        summary = "reload the configuration"
        if applied:
            summary += f" (applies {', '.join(applied)})"
        if waiting:
            summary += f" ({', '.join(waiting)}: only marked pending restart, not applied)"
        plan.add(
            summary,
            "SELECT pg_reload_conf()",
            StepKind.ALTER_SYSTEM,
            lambda: run("SELECT pg_reload_conf()"),
        )
        return plan.finish(apply, ctx.gate)
