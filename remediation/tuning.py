"""PostgreSQL: the performance-tuning runbook's fixes (planner statistics, memory settings).

Both connect as the inventory's admin role of the failing target (`ctx.postgres_admin()`,
autocommit). The check and its fix share the decision (what is stale, what mismatches), so a
fix never does less or more than the check asked for.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from typing import Any

from opsbook.inventory import Tuning
from opsbook.remediate.context import Context
from opsbook.remediate.plan import Plan, StepKind
from remediation.database import CHATDB_TABLES

# Per chat table: rows, changes since the last analyze, when (NULL: never), how long ago, and
# autovacuum's base thresholds for an analyze and a vacuum.
TABLE_STATISTICS_SQL = """
SELECT s.relname, s.n_live_tup, s.n_dead_tup, s.n_mod_since_analyze,
       greatest(s.last_analyze, s.last_autoanalyze),
       extract(epoch FROM now() - greatest(s.last_analyze, s.last_autoanalyze))::float8,
       current_setting('autovacuum_analyze_threshold')::int,
       current_setting('autovacuum_vacuum_threshold')::int
FROM pg_stat_user_tables s
WHERE s.schemaname = 'public' AND s.relname = ANY(%s)
ORDER BY s.relname
"""


def table_statistics_params() -> tuple[list[str]]:
    return (list(CHATDB_TABLES),)


def stale_tables(rows: Iterable[Sequence[Any]], max_age_s: float) -> dict[str, str]:
    """The tables whose statistics no longer describe them, with the reason, from the rows of
    TABLE_STATISTICS_SQL.

    Stale: more rows changed since the last analyze than autovacuum's own analyze threshold,
    and that analyze is older than `max_age_s` or never happened. A table never analyzed but
    (nearly) empty has nothing to describe yet and is fresh; a table analyzed long ago that has
    not changed since still has exact statistics and is fresh.
    """
    stale = {}
    for table, _, _, changed, analyzed, age_s, threshold, _ in rows:
        if changed <= threshold:
            continue
        if analyzed is None:
            stale[table] = (
                f"was never analyzed though {changed} rows changed "
                f"(autovacuum analyzes after {threshold})"
            )
        elif age_s > max_age_s:
            stale[table] = (
                f"was last analyzed {age_s / 3600:.1f} h ago and {changed} rows changed since "
                f"(max {max_age_s:g} s)"
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

        rows = connection.execute(TABLE_STATISTICS_SQL, table_statistics_params()).fetchall()
        stale = stale_tables(rows, max_age_s)
        if not stale:
            return plan.nothing(f"the statistics of {', '.join(CHATDB_TABLES)} are fresh")
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
SETTINGS_SQL = (
    "SELECT name, current_setting(name), setting, unit, context, pending_restart"
    " FROM pg_settings WHERE name = ANY(%s) ORDER BY name"
)
_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|kB|MB|GB|TB)?\s*$")  # units as PostgreSQL spells them
_UNIT = re.compile(r"^(\d*)(B|kB|MB|GB|TB)$", re.IGNORECASE)  # pg_settings.unit: "8kB", "kB"


def size_bytes(value: str, unit: str | None = None) -> int:
    """A PostgreSQL size: "256MB", or a bare number of `unit`s (pg_settings: "4096" of "8kB")."""
    match = _SIZE.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not a size like 256MB")
    number, written = int(match[1]), match[2]
    if written:
        return number * _UNITS[written.lower()]
    if unit:
        per = _UNIT.match(unit)
        if per is None:
            raise ValueError(f"unknown unit {unit!r}")
        return number * int(per[1] or 1) * _UNITS[per[2].lower()]
    return number


class Current:
    """One setting as the server runs it."""

    def __init__(self, row: Sequence[Any]) -> None:
        name, shown, setting, unit, context, pending = row
        self.name: str = name
        self.shown: str = shown
        self.bytes = size_bytes(str(setting), unit)
        self.needs_restart: bool = context == "postmaster"
        self.pending_restart: bool = bool(pending)


def expected_settings(tuning: Tuning) -> dict[str, str]:
    """The settings the inventory sets (None: not checked)."""
    wanted = {name: getattr(tuning, name) for name in SETTINGS}
    return {name: str(value) for name, value in wanted.items() if value is not None}


def current_settings(rows: Iterable[Sequence[Any]]) -> dict[str, Current]:
    return {row[0]: Current(row) for row in rows}


def mismatches(expected: dict[str, str], current: dict[str, Current]) -> list[str]:
    """The names whose running value differs from the expected size (ValueError: an expected
    value that is not a size, naming the setting)."""
    different = []
    for name, value in expected.items():
        try:
            wanted = size_bytes(value)
        except ValueError as exc:
            raise ValueError(f"tuning.{name}: {exc}") from None
        if current[name].bytes != wanted:
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

        current = current_settings(connection.execute(SETTINGS_SQL, (list(SETTINGS),)).fetchall())
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
