"""PostgreSQL's facts: the server's version, connections in use, sessions idle in a transaction,
the chat tables, their indexes and statistics, the memory settings, pg_stat_statements, recently
stored messages.

Each probe reads through the run's target (the monitoring role) or through a connection a fix
opened as the admin role: the same SQL for both, so that a fix decides with the facts its check
saw. The probes never judge; thresholds are compared in checks/ and remediation/. A query that
gets no answer within the statement timeout raises `NotEvaluated`.
"""

from __future__ import annotations

import datetime
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from msgspec import Struct

from opsbook.errors import NotEvaluated
from opsbook.targets import PostgresTarget

if TYPE_CHECKING:
    import psycopg

    Db = PostgresTarget | psycopg.Connection[Any]

# The chat application's tables: every chatdb has them, and the table probes look at these.
CHAT_TABLES = ("agents", "conversations", "messages")


def _label(db: Db) -> str:
    if isinstance(db, PostgresTarget):
        return f"postgres {db.name}"
    return f"postgres {db.info.host}:{db.info.port}/{db.info.dbname}"


@contextmanager
def _reading(db: Db) -> Iterator[None]:
    import psycopg

    try:
        yield
    except psycopg.errors.QueryCanceled as exc:
        reason = str(exc).strip().splitlines()[0]
        raise NotEvaluated(
            f"{_label(db)}: no answer within the statement timeout ({reason})"
        ) from None


def _rows(db: Db, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with _reading(db):
        if isinstance(db, PostgresTarget):
            return db.query(sql, tuple(params))
        return db.execute(sql.encode(), params).fetchall()


# The server


def server_version_num(db: Db) -> int:
    """The server's version as a number: 150004 is 15.4, major version 15 (the number // 10000)."""
    ((value,),) = _rows(db, "SHOW server_version_num")
    return int(value)


# Connections


class ConnectionUse(Struct, frozen=True):
    """Client connections open now, against max_connections."""

    in_use: int
    max_connections: int

    @property
    def used_percent(self) -> float:
        return 100.0 * self.in_use / self.max_connections


class RoleConnections(Struct, frozen=True):
    user: str | None
    state: str | None
    count: int


def connection_use(db: Db) -> ConnectionUse:
    ((in_use, limit),) = _rows(
        db,
        "SELECT count(*), current_setting('max_connections')::int FROM pg_stat_activity"
        " WHERE backend_type = 'client backend'",
    )
    return ConnectionUse(in_use, limit)


def connections_by_role(db: Db) -> list[RoleConnections]:
    """Client connections by role and state, the most first (evidence for DB-002)."""
    rows = _rows(
        db,
        "SELECT usename, state, count(*) FROM pg_stat_activity"
        " WHERE backend_type = 'client backend' GROUP BY 1, 2 ORDER BY 3 DESC",
    )
    return [RoleConnections(*row) for row in rows]


# Sessions idle in a transaction


class IdleSession(Struct, frozen=True):
    """An idle session; idle in a transaction, it holds its locks and its snapshot."""

    pid: int
    user: str | None
    database: str | None
    application: str
    idle_s: int
    query: str  # its last statement, cut to 120 characters


def idle_in_transaction(older_than_s: float, pids: Iterable[int] | None = None) -> str:
    """The WHERE clause over pg_stat_activity of the sessions idle in a transaction for longer
    than `older_than_s` (of `pids` only, if given), the asking session excluded. The values
    are numbers formatted here, never text from outside."""
    where = (
        "state IN ('idle in transaction', 'idle in transaction (aborted)')"
        " AND pid <> pg_backend_pid()"
        f" AND now() - state_change > make_interval(secs => {float(older_than_s)!r})"
    )
    if pids is not None:
        where += f" AND pid IN ({', '.join(str(int(pid)) for pid in pids)})"
    return where


def idle_transactions(db: Db, older_than_s: float) -> list[IdleSession]:
    """The sessions idle in a transaction for longer than `older_than_s`, the longest first."""
    rows = _rows(
        db,
        "SELECT pid, usename, datname, coalesce(application_name, ''),"
        " round(extract(epoch FROM now() - state_change))::int, left(query, 120)"
        f" FROM pg_stat_activity WHERE {idle_in_transaction(older_than_s)}"
        " ORDER BY state_change",
    )
    return [IdleSession(*row) for row in rows]


def idle_session(older_than_s: float, pids: Iterable[int] | None = None) -> str:
    """The WHERE clause over pg_stat_activity of the client sessions idle (outside a
    transaction) for longer than `older_than_s` (of `pids` only, if given): the asking
    session and superusers' sessions excluded (no one but a superuser may end those)."""
    where = (
        "state = 'idle' AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        " AND NOT coalesce((SELECT rolsuper FROM pg_roles WHERE oid = usesysid), false)"
        f" AND now() - state_change > make_interval(secs => {float(older_than_s)!r})"
    )
    if pids is not None:
        where += f" AND pid IN ({', '.join(str(int(pid)) for pid in pids)})"
    return where


def idle_sessions(db: Db, older_than_s: float) -> list[IdleSession]:
    """The client sessions idle for longer than `older_than_s`, the longest first."""
    rows = _rows(
        db,
        "SELECT pid, usename, datname, coalesce(application_name, ''),"
        " round(extract(epoch FROM now() - state_change))::int, left(query, 120)"
        f" FROM pg_stat_activity WHERE {idle_session(older_than_s)}"
        " ORDER BY state_change",
    )
    return [IdleSession(*row) for row in rows]


# Tables and indexes


def tables(db: Db) -> set[str]:
    """The tables (plain and partitioned) in schema public."""
    rows = _rows(
        db,
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')",
    )
    return {name for (name,) in rows}


def relations_named(db: Db, names: Iterable[str]) -> set[str]:
    """Which of these names a relation of any kind (table, index, view...) in public has."""
    rows = _rows(
        db,
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.relname = ANY(%s)",
        (list(names),),
    )
    return {name for (name,) in rows}


class TuningIndex(Struct, frozen=True):
    """An index a runbook asks for: a plain b-tree on these columns, in this order."""

    name: str
    table: str
    columns: tuple[str, ...]

    def describe(self) -> str:
        return f"{self.table}({', '.join(self.columns)})"


class BtreeIndex(Struct, frozen=True):
    """A plain b-tree index as the catalog has it."""

    table: str
    name: str
    valid: bool
    columns: tuple[str, ...]
    building_pid: int | None  # the backend building it (CREATE INDEX in progress)


class IndexState(Struct, frozen=True):
    """What the database has for one wanted index."""

    index: TuningIndex
    valid: tuple[str, ...]  # names of valid indexes on exactly these columns
    invalid: tuple[str, ...]  # INVALID ones (a failed CREATE INDEX CONCURRENTLY), not building
    building: tuple[tuple[str, int], ...]  # (name, pid) of builds in progress

    @property
    def present(self) -> bool:
        return bool(self.valid)


# Plain b-tree indexes by key columns in order, read from pg_index and pg_attribute (not by
# name: an index made by hand under another name counts). Partial and expression indexes do
# not count: they do not serve every query on the columns.
_BTREE_INDEXES_SQL = """
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


def btree_indexes(db: Db, tables: Iterable[str]) -> list[BtreeIndex]:
    """The plain b-tree indexes of these tables in public."""
    rows = _rows(db, _BTREE_INDEXES_SQL, (sorted(set(tables)),))
    return [
        BtreeIndex(table, name, bool(valid), tuple(columns), pid)
        for table, name, valid, columns, pid in rows
    ]


def index_states(found: Iterable[BtreeIndex], wanted: Iterable[TuningIndex]) -> list[IndexState]:
    """For each wanted index, the indexes found on exactly its table and columns."""
    by_columns: dict[tuple[str, tuple[str, ...]], list[BtreeIndex]] = {}
    for index in found:
        by_columns.setdefault((index.table, index.columns), []).append(index)
    states = []
    for want in wanted:
        matches = by_columns.get((want.table, want.columns), [])
        states.append(
            IndexState(
                want,
                valid=tuple(m.name for m in matches if m.valid),
                invalid=tuple(m.name for m in matches if not m.valid and m.building_pid is None),
                building=tuple(
                    (m.name, m.building_pid)
                    for m in matches
                    if not m.valid and m.building_pid is not None
                ),
            )
        )
    return states


# Table statistics


class TableStatistics(Struct, frozen=True):
    """pg_stat_user_tables of one table, with autovacuum's base thresholds."""

    table: str
    live_rows: int
    dead_rows: int
    changed_since_analyze: int
    analyzed_at: datetime.datetime | None  # None: never analyzed
    analyzed_age_s: float | None
    vacuumed_at: datetime.datetime | None  # by hand
    autovacuumed_at: datetime.datetime | None
    autovacuum_enabled: bool
    analyze_threshold: int  # autovacuum_analyze_threshold
    vacuum_threshold: int  # autovacuum_vacuum_threshold

    @property
    def never_vacuumed(self) -> bool:
        return self.vacuumed_at is None and self.autovacuumed_at is None

    @property
    def dead_percent(self) -> float:
        total = self.live_rows + self.dead_rows
        return 100.0 * self.dead_rows / total if total else 0.0


def table_statistics(db: Db, tables: Iterable[str] = CHAT_TABLES) -> list[TableStatistics]:
    """The statistics of these tables in public, by name (a table not there is left out)."""
    rows = _rows(
        db,
        "SELECT s.relname, s.n_live_tup, s.n_dead_tup, s.n_mod_since_analyze,"
        " greatest(s.last_analyze, s.last_autoanalyze),"
        " extract(epoch FROM now() - greatest(s.last_analyze, s.last_autoanalyze))::float8,"
        " s.last_vacuum, s.last_autovacuum,"
        # The option as written (off, false, no, 0) is read the way PostgreSQL reads it.
        " coalesce((SELECT o.option_value FROM pg_options_to_table(c.reloptions) o"
        "  WHERE o.option_name = 'autovacuum_enabled'), 'on')::bool,"
        " current_setting('autovacuum_analyze_threshold')::int,"
        " current_setting('autovacuum_vacuum_threshold')::int"
        " FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid"
        " WHERE s.schemaname = 'public' AND s.relname = ANY(%s) ORDER BY s.relname",
        (list(tables),),
    )
    return [TableStatistics(*row) for row in rows]


# Settings

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


class Setting(Struct, frozen=True):
    """A size setting as the server runs it."""

    name: str
    shown: str  # SHOW's text: "128MB"
    size_bytes: int
    needs_restart: bool  # read only at server start (context postmaster)
    pending_restart: bool  # a new value is written and waits for a restart


def settings(db: Db, names: Iterable[str]) -> dict[str, Setting]:
    """The running values of these size settings, by name."""
    rows = _rows(
        db,
        "SELECT name, current_setting(name), setting, unit, context, pending_restart"
        " FROM pg_settings WHERE name = ANY(%s) ORDER BY name",
        (list(names),),
    )
    return {
        name: Setting(
            name, shown, size_bytes(str(setting), unit), context == "postmaster", bool(pending)
        )
        for name, shown, setting, unit, context, pending in rows
    }


# Query statistics


class Statement(Struct, frozen=True):
    mean_ms: float
    calls: int
    total_ms: float
    rows: int
    text: str  # its first 200 characters, white space folded


class StatementStatistics(Struct, frozen=True):
    """pg_stat_statements: its version (None: not installed), and whether it can be read."""

    version: str | None
    unreadable: str = ""  # why it cannot be read (not preloaded, no privilege)
    slowest: tuple[Statement, ...] = ()


def statement_statistics(db: Db, slowest: int) -> StatementStatistics:
    """pg_stat_statements' version and this database's `slowest` statements by mean time."""
    import psycopg

    installed = _rows(
        db, "SELECT extversion FROM pg_extension WHERE extname = 'pg_stat_statements'"
    )
    if not installed:
        return StatementStatistics(None)
    version = str(installed[0][0])
    try:
        rows = _rows(
            db,
            "SELECT round(mean_exec_time::numeric, 3)::float8, calls,"
            " round(total_exec_time::numeric, 1)::float8, rows,"
            " left(regexp_replace(query, '\\s+', ' ', 'g'), 200)"
            " FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " ORDER BY mean_exec_time DESC LIMIT %s",
            (slowest,),
        )
    except psycopg.Error as exc:
        # Installed but not loaded (shared_preload_libraries), or no SELECT for this role.
        return StatementStatistics(version, str(exc).strip().splitlines()[0])
    return StatementStatistics(version, slowest=tuple(Statement(*row) for row in rows))


# The chat's own data


def messages_stored_within(db: Db, window_s: float) -> int:
    """How many messages were stored in the last `window_s` seconds."""
    ((stored,),) = _rows(
        db,
        'SELECT count(*) FROM messages WHERE "timestamp" > now() - make_interval(secs => %s)',
        (window_s,),
    )
    return int(stored)


def stored_before(db: Db, ids: Sequence[str], older_than_s: float) -> set[str]:
    """Which of these message ids are stored, with a timestamp more than `older_than_s` ago
    (an id that is not a UUID is no message's)."""
    uuids = [i for i in ids if _is_uuid(i)]
    if not uuids:
        return set()
    rows = _rows(
        db,
        "SELECT id::text FROM messages WHERE id = ANY(%s::uuid[])"
        ' AND "timestamp" < now() - make_interval(secs => %s)',
        (uuids, float(older_than_s)),
    )
    return {str(row[0]) for row in rows}


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False
