"""PostgreSQL: the recovery and tuning runbooks' fixes (stuck sessions, VACUUM, indexes).

Each fix connects as the inventory's admin role of the failing target (`ctx.postgres_admin()`,
autocommit), which owns the chatdb tables and holds pg_signal_backend; none needs a superuser.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any

from msgspec import Struct

from opsbook.remediate.context import Context
from opsbook.remediate.plan import Plan, StepKind

CHATDB_TABLES = ("agents", "conversations", "messages")

# pg_terminate_backend waits this long for each session to exit, so that the check run right
# after the fix no longer sees it.
TERMINATE_WAIT_MS = 5000

# CREATE INDEX CONCURRENTLY waits for every transaction that could still use the table; a stuck
# one (DB-003) would make it wait for ever. It gives up after this, leaving an INVALID index
# that the next run drops and builds again.
INDEX_LOCK_TIMEOUT = "30s"


def _sessions_idle_in_transaction(limit_s: float, pids: Sequence[int] | None = None) -> str:
    """The WHERE clause of DB-003, the remediation's own session excluded (values are ours)."""
    where = (
        "state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()"
        f" AND now() - state_change > make_interval(secs => {float(limit_s)!r})"
    )
    if pids is not None:
        where += f" AND pid IN ({', '.join(str(int(pid)) for pid in pids)})"
    return where


def end_idle_transactions(ctx: Context, *, apply: bool) -> Plan:
    """End the sessions that sit idle in a transaction for longer than the threshold.

    Changes: pg_terminate_backend() on each session idle in transaction for more than
    thresholds.idle_in_transaction_s (the pids are fixed in the plan and checked again when
    applying, so a session that has moved on since is left alone); its open transaction is
    rolled back and its client sees the connection drop. The remediation's own session is never
    ended.
    Privileges: the admin role with pg_signal_backend (it cannot end a superuser's session;
    that fails and is reported).
    Undo: none; the rolled-back work is lost, and the client must reconnect and retry.
    """
    plan = Plan.for_fix(ctx)
    limit = ctx.thresholds.idle_in_transaction_s
    with ctx.postgres_admin() as connection:
        stuck = connection.execute(
            "SELECT pid, usename, datname, application_name,"
            " round(extract(epoch FROM now() - state_change))::int"
            f" FROM pg_stat_activity WHERE {_sessions_idle_in_transaction(limit)}"
            " ORDER BY state_change"
        ).fetchall()
        if not stuck:
            return plan.nothing(f"no session idle in transaction for more than {limit:g}s")
        pids = [pid for pid, *_ in stuck]
        sessions = ", ".join(
            f"pid {pid} ({user}@{database}, {application or 'no application name'}, idle {idle}s)"
            for pid, user, database, application, idle in stuck
        )
        sql = (
            f"SELECT pid, pg_terminate_backend(pid, {TERMINATE_WAIT_MS}) FROM pg_stat_activity"
            f" WHERE {_sessions_idle_in_transaction(limit, pids)}"
        )

        def terminate() -> str:
            ended = connection.execute(sql).fetchall()
            done = sorted(pid for pid, terminated in ended if terminated)
            late = sorted(pid for pid, terminated in ended if not terminated)
            result = f"ended {len(done)} of {len(pids)}: pids {done or '-'}"
            if late:
                result += f"; still exiting after {TERMINATE_WAIT_MS} ms: pids {late}"
            return result

        plan.add(
            f"end {len(stuck)} session(s) idle in transaction for more than {limit:g}s: "
            + sessions,
            sql,
            StepKind.END_SESSIONS,
            terminate,
        )
        return plan.finish(apply, ctx.gate)


def vacuum_analyze(ctx: Context, *, apply: bool) -> Plan:
    """VACUUM (ANALYZE) the chatdb tables that have dead rows, changes not yet analyzed, or were
    never vacuumed or analyzed.

    Changes: reclaims space of dead rows for reuse and refreshes the planner's statistics.
    Takes only a SHARE UPDATE EXCLUSIVE lock: reads and writes go on, but it waits for (and
    makes wait) DDL on the table. Dead rows that a still-open old transaction can see cannot be
    reclaimed (end it first: end_idle_transactions).
    Privileges: the admin role, owner of the tables.
    Undo: nothing to undo; running it again is harmless.
    """
    plan = Plan.for_fix(ctx)
    with ctx.postgres_admin() as connection:

        def run(sql: str) -> None:
            connection.execute(sql)

        rows = connection.execute(
            "SELECT relname, n_dead_tup, n_mod_since_analyze,"
            " coalesce(last_vacuum, last_autovacuum) IS NULL,"
            " coalesce(last_analyze, last_autoanalyze) IS NULL"
            " FROM pg_stat_user_tables WHERE schemaname = 'public' AND relname = ANY(%s)"
            " ORDER BY relname",
            (list(CHATDB_TABLES),),
        ).fetchall()
        for table, dead, modified, never_vacuumed, never_analyzed in rows:
            reasons = [
                reason
                for reason, present in (
                    (f"{dead} dead row(s)", dead > 0),
                    (f"{modified} row change(s) since the last analyze", modified > 0),
                    ("never vacuumed", never_vacuumed),
                    ("never analyzed", never_analyzed),
                )
                if present
            ]
            if not reasons:
                continue
            sql = f"VACUUM (ANALYZE) public.{table}"
            plan.add(
                f"vacuum and analyze {table}: {', '.join(reasons)}",
                sql,
                StepKind.MAINTENANCE,
                partial(run, sql),
            )
        if not plan.steps:
            return plan.nothing(f"{', '.join(CHATDB_TABLES)}: no dead rows, statistics up to date")
        return plan.finish(apply, ctx.gate)


# The performance-tuning runbook's indexes. DB-005 expects them; create_indexes builds them.


class TuningIndex(Struct, frozen=True):
    name: str
    table: str
    columns: tuple[str, ...]

    def describe(self) -> str:
        return f"{self.table}({', '.join(self.columns)})"

    def create_sql(self) -> str:
        columns = ", ".join(f'"{column}"' for column in self.columns)
        return (
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {self.name} "
            f"ON public.{self.table} ({columns})"
        )


TUNING_INDEXES = (
    TuningIndex("idx_messages_timestamp", "messages", ("timestamp",)),
    TuningIndex("idx_conversations_user_id", "conversations", ("user_id",)),
    TuningIndex("idx_agents_status_last_active", "agents", ("status", "last_active")),
)

# Plain b-tree indexes of the tuning runbook's tables, by key columns in order, read from
# pg_index and pg_attribute (not by name: an index made by hand under another name counts).
# Partial and expression indexes do not count: they do not serve every query on the columns.
# Rows: table, index, valid, key columns, pid building it (CREATE INDEX in progress) or None.
INDEXES_SQL = """
SELECT t.relname, i.relname, x.indisvalid,
       array_agg(a.attname::text ORDER BY k.n),
       (SELECT p.pid FROM pg_stat_progress_create_index p WHERE p.index_relid = i.oid LIMIT 1)
FROM pg_index x
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace s ON s.oid = t.relnamespace
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_am m ON m.oid = i.relam
CROSS JOIN LATERAL generate_series(1, x.indnkeyatts) AS k(n)
JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = x.indkey[k.n - 1]
WHERE s.nspname = 'public' AND t.relname = ANY(%s) AND m.amname = 'btree'
  AND x.indpred IS NULL AND x.indexprs IS NULL
GROUP BY t.relname, i.relname, i.oid, x.indisvalid
ORDER BY t.relname, i.relname
"""


def index_query_params() -> tuple[list[str]]:
    return (sorted({index.table for index in TUNING_INDEXES}),)


class IndexState(Struct, frozen=True):
    """What the database has for one tuning index."""

    index: TuningIndex
    valid: tuple[str, ...]  # names of valid indexes on exactly these columns
    invalid: tuple[str, ...]  # INVALID ones (a failed CREATE INDEX CONCURRENTLY), not building
    building: tuple[tuple[str, int], ...]  # (name, pid) of builds in progress

    @property
    def present(self) -> bool:
        return bool(self.valid)


def index_states(rows: Iterable[Sequence[Any]]) -> list[IndexState]:
    """Fold INDEXES_SQL's rows into one state per tuning index."""
    found: dict[tuple[str, tuple[str, ...]], list[tuple[str, bool, int | None]]] = {}
    for table, name, valid, columns, builder in rows:
        found.setdefault((table, tuple(columns)), []).append((name, bool(valid), builder))
    states = []
    for index in TUNING_INDEXES:
        matches = found.get((index.table, index.columns), [])
        states.append(
            IndexState(
                index,
                valid=tuple(name for name, valid, _ in matches if valid),
                invalid=tuple(name for name, valid, pid in matches if not valid and pid is None),
                building=tuple(
                    (name, pid) for name, valid, pid in matches if not valid and pid is not None
                ),
            )
        )
    return states


def create_indexes(ctx: Context, *, apply: bool) -> Plan:
    """Build the tuning runbook's missing indexes without blocking writes.

    Changes: CREATE INDEX CONCURRENTLY IF NOT EXISTS for each missing index (reads and writes
    go on; the build scans the table twice and waits for older transactions to finish, giving
    up after lock_timeout 30s). A concurrent build that failed leaves an INVALID index, which
    the planner never uses but every write still updates: it is dropped with DROP INDEX
    CONCURRENTLY and built again, unless pg_stat_progress_create_index shows it is still being
    built (then it is left alone). A failed build here leaves such an INVALID index too, and the
    next run rebuilds it.
    Privileges: the admin role, owner of the tables (CREATE on schema public).
    Undo: DROP INDEX CONCURRENTLY NAME (the data is not touched).
    """
    plan = Plan.for_fix(ctx)
    with ctx.postgres_admin() as connection:
        states = index_states(connection.execute(INDEXES_SQL, index_query_params()).fetchall())
        wanted = [state for state in states if not state.present and not state.building]
        if not wanted:
            building = [
                f"{state.index.describe()} by pid {pid}"
                for state in states
                for _, pid in state.building
            ]
            return plan.nothing(
                "the tuning runbook's indexes exist"
                + (f" or are being built ({'; '.join(building)})" if building else "")
            )
        dropped = {name for state in wanted for name in state.invalid}
        names = [state.index.name for state in wanted]
        taken = {
            name
            for (name,) in connection.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'public' AND c.relname = ANY(%s)",
                (names,),
            ).fetchall()
        } - dropped
        if taken:
            # IF NOT EXISTS would quietly do nothing and the check would stay failed.
            raise RuntimeError(
                f"the name(s) {', '.join(sorted(taken))} are taken by other relations in "
                "public; rename or drop them by hand, then run the fix again"
            )

        limit = f"SET lock_timeout = '{INDEX_LOCK_TIMEOUT}'"

        def run(sql: str) -> None:
            # Separate statements: a concurrent build cannot run inside a transaction block,
            # which several statements sent at once would make.
            connection.execute(limit)
            connection.execute(sql)

        for state in wanted:
            for name in state.invalid:
                sql = f"DROP INDEX CONCURRENTLY IF EXISTS public.{name}"
                plan.add(
                    f"drop {name}, the INVALID leftover of a failed concurrent build of "
                    f"{state.index.describe()}",
                    f"{limit}; {sql}",
                    StepKind.CREATE_INDEX,
                    partial(run, sql),
                )
            sql = state.index.create_sql()
            plan.add(
                f"create index {state.index.name} on {state.index.describe()}",
                f"{limit}; {sql}",
                StepKind.CREATE_INDEX,
                partial(run, sql),
            )
        return plan.finish(apply, ctx.gate)
