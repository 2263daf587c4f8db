"""PostgreSQL: the recovery and tuning runbooks' fixes (stuck sessions, VACUUM, indexes).

Each fix connects as the inventory's admin role of the failing target (`ctx.postgres_admin()`,
autocommit), which owns the chatdb tables and holds pg_signal_backend; none needs a superuser.
"""

from __future__ import annotations

from collections import Counter
from functools import partial

from opsbook.probes import postgres as probe
from opsbook.probes.postgres import IndexState, TuningIndex
from opsbook.remediate.context import Context
from opsbook.remediate.plan import Plan, StepKind

# pg_terminate_backend waits this long for each session to exit, so that the check run right
# after the fix no longer sees it.
TERMINATE_WAIT_MS = 5000

# CREATE INDEX CONCURRENTLY waits for every transaction that could still use the table; a stuck
# one (DB-003) would make it wait for ever. It gives up after this, leaving an INVALID index
# that the next run drops and builds again.
INDEX_LOCK_TIMEOUT = "30s"


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
        # DB-003's own probe, so that the fix ends exactly the sessions the check reported.
        stuck = probe.idle_transactions(connection, limit)
        if not stuck:
            return plan.nothing(f"no session idle in transaction for more than {limit:g}s")
        pids = [session.pid for session in stuck]
        sessions = ", ".join(
            f"pid {s.pid} ({s.user}@{s.database}, {s.application or 'no application name'}, "
            f"idle {s.idle_s}s)"
            for s in stuck
        )
        # The condition is asked again as the sessions are ended: one that has moved on since
        # the plan was made is left alone.
        sql = (
            f"SELECT pid, pg_terminate_backend(pid, {TERMINATE_WAIT_MS}) FROM pg_stat_activity"
            f" WHERE {probe.idle_in_transaction(limit, pids)}"
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


def end_idle_sessions(ctx: Context, *, apply: bool) -> Plan:
    """End the sessions idle for longer than the threshold while connections near the limit.

    Changes: only while the connections in use are over thresholds.pg_connections_percent of
    max_connections (DB-002's own measure), pg_terminate_backend() on each client session idle
    (not in a transaction) for more than thresholds.idle_session_s; the pids are fixed in the
    plan and checked again when applying, so a session that has become busy since is left
    alone. No transaction is lost; the client sees its idle connection drop and a pool opens a
    new one when it needs it. Superusers' sessions and the remediation's own are never ended.
    Privileges: the admin role with pg_signal_backend and pg_read_all_stats.
    Undo: nothing to undo; clients reconnect.
    """
    plan = Plan.for_fix(ctx)
    allowed, limit = ctx.thresholds.pg_connections_percent, ctx.thresholds.idle_session_s
    with ctx.postgres_admin() as connection:
        use = probe.connection_use(connection)
        if use.used_percent <= allowed:
            return plan.nothing(
                f"{use.in_use} of {use.max_connections} connections in use "
                f"({use.used_percent:.0f} %, max {allowed:g} %)"
            )
        idle = probe.idle_sessions(connection, limit)
        if not idle:
            raise LookupError(
                f"{use.in_use} of {use.max_connections} connections in use, but none is idle "
                f"for more than {limit:g} s: nothing opsbook may end (see the connections by "
                "role in DB-002's evidence)"
            )
        pids = [session.pid for session in idle]
        users = Counter(f"{s.user}@{s.database}" for s in idle)
        sql = (
            f"SELECT pid, pg_terminate_backend(pid, {TERMINATE_WAIT_MS}) FROM pg_stat_activity"
            f" WHERE {probe.idle_session(limit, pids)}"
        )

        def terminate() -> str:
            ended = connection.execute(sql).fetchall()
            done = sum(1 for _, terminated in ended if terminated)
            after = probe.connection_use(connection)
            return (
                f"ended {done} of {len(pids)}; {after.in_use} of {after.max_connections} "
                f"connections in use now ({after.used_percent:.0f} %)"
            )

        plan.add(
            f"end {len(idle)} session(s) idle for more than {limit:g} s ("
            + ", ".join(f"{n} of {who}" for who, n in users.most_common())
            + f"): {use.in_use} of {use.max_connections} connections in use "
            f"({use.used_percent:.0f} %, max {allowed:g} %)",
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

        for stats in probe.table_statistics(connection):
            reasons = [
                reason
                for reason, present in (
                    (f"{stats.dead_rows} dead row(s)", stats.dead_rows > 0),
                    (
                        f"{stats.changed_since_analyze} row change(s) since the last analyze",
                        stats.changed_since_analyze > 0,
                    ),
                    ("never vacuumed", stats.never_vacuumed),
                    ("never analyzed", stats.analyzed_at is None),
                )
                if present
            ]
            if not reasons:
                continue
            sql = f"VACUUM (ANALYZE) public.{stats.table}"
            plan.add(
                f"vacuum and analyze {stats.table}: {', '.join(reasons)}",
                sql,
                StepKind.MAINTENANCE,
                partial(run, sql),
            )
        if not plan.steps:
            return plan.nothing(
                f"{', '.join(probe.CHAT_TABLES)}: no dead rows, statistics up to date"
            )
        return plan.finish(apply, ctx.gate)


# The performance-tuning runbook's indexes. DB-005 expects them; create_indexes builds them.


TUNING_INDEXES = (
    TuningIndex("idx_messages_timestamp", "messages", ("timestamp",)),
    TuningIndex("idx_conversations_user_id", "conversations", ("user_id",)),
    TuningIndex("idx_agents_status_last_active", "agents", ("status", "last_active")),
)


def index_problem(state: IndexState) -> str:
    """What is wrong with a tuning index that is not there (DB-005's words)."""
    what = state.index.describe()
    if state.building:
        building = ", ".join(f"{name} by pid {pid}" for name, pid in state.building)
        return f"{what} is still being built ({building})"
    if state.invalid:
        return f"{what} is INVALID, left by a failed concurrent build ({', '.join(state.invalid)})"
    return f"{what} has no index"


def _create_sql(index: TuningIndex) -> str:
    columns = ", ".join(f'"{column}"' for column in index.columns)
    return (
        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {index.name} ON public.{index.table} ({columns})"
    )


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
        found = probe.btree_indexes(connection, {index.table for index in TUNING_INDEXES})
        states = probe.index_states(found, TUNING_INDEXES)
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
        taken = probe.relations_named(connection, names) - dropped
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
            sql = _create_sql(state.index)
            plan.add(
                f"create index {state.index.name} on {state.index.describe()}",
                f"{limit}; {sql}",
                StepKind.CREATE_INDEX,
                partial(run, sql),
            )
        return plan.finish(apply, ctx.gate)
