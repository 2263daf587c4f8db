"""The restore drill: the latest backup restored into a scratch PostgreSQL cluster and a
scratch Redis, its counts and invariants read there; production is never touched.

The scratch cluster is the same PostgreSQL component the sandbox runs (opsbook.postgres_cluster),
started for the drill only, with the newest PostgreSQL installed here.

A dump of a newer minor release of the same major version must restore there: PostgreSQL
keeps its dumps compatible within a major version, and a drill host a minor release behind the
database server is ordinary. What such a release may write that the older one refuses is a
column's attribute options (pg_attribute.attoptions), which pg_dump copies as they are: the
Debian package of 15.20 gives every column it creates `pg_attver`, and 15.18 refuses
`ALTER COLUMN ... SET (pg_attver=...)` as an unrecognized parameter. The drill cannot provide
that release (the host's packages are the operator's), so it tolerates it: the schema is
restored through psql, and for a dump of a newer minor release only, an attribute option the
scratch server refuses as unknown is left out, and said so in the result (`left_out`). Every
other statement restores as dumped, and an option refused from a dump of the scratch server's
own release or an older one fails the drill. Owners and privileges are not restored
(--no-owner --no-privileges): the scratch cluster has none of production's roles, and the
drill reads as its superuser.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msgspec import Struct

from opsbook.backup.manifest import BackupInfo, postgres_part
from opsbook.backup.tools import BackupError, run_tool
from opsbook.loopback import free_port
from opsbook.postgres_cluster import SUPERUSER, Cluster, ClusterError
from opsbook.probes.postgres import server_version_num

if TYPE_CHECKING:
    import psycopg

# The scratch cluster is never precious: no durability, so the restore runs at full speed.
SCRATCH_SETTINGS = ("fsync=off", "full_page_writes=off", "synchronous_commit=off")


@contextmanager
def scratch_postgres() -> Iterator[Cluster]:
    """initdb and start a private cluster; always stopped and deleted afterwards.

    It listens on no TCP port at all, only on a socket in a 0700 directory of its own, so it
    cannot clash with another server nor be reached by anyone else (`trust` is safe there).
    """
    home = Path(tempfile.mkdtemp(prefix="opsbook-drill-", dir="/tmp"))
    try:  # from here on, whatever fails leaves no folder nor server behind
        scratch = Cluster(home, free_port())
        if os.geteuid() == 0:
            scratch.owned_dir(home, 0o711)  # the postgres OS user runs the server
        scratch.owned_dir(scratch.socket_dir, 0o700)
        try:
            scratch.initdb("--auth=trust")
        except ClusterError as exc:
            lines = exc.output.strip().splitlines()
            raise BackupError(
                f"initdb of the scratch cluster: {exc.problem}: {lines[-1] if lines else '?'}"
            ) from None
        settings = (
            f"port={scratch.port}",
            f"unix_socket_directories={scratch.socket_dir}",
            "listen_addresses=",
            *SCRATCH_SETTINGS,
        )
        try:
            with scratch.running(home / "postgres.log", *settings):
                yield scratch
        except ClusterError as exc:
            raise BackupError(f"scratch {exc.problem}") from None
    finally:
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def scratch_redis(rdb: Path) -> Iterator[Any]:
    """A private redis-server (unix socket only) that loaded `rdb`; stopped and deleted after."""
    import redis

    home = Path(tempfile.mkdtemp(prefix="opsbook-drill-redis-", dir="/tmp"))
    socket_path = home / "redis.sock"
    process: subprocess.Popen[bytes] | None = None
    client: redis.Redis | None = None
    try:  # from here on, whatever fails (a full /tmp, say) leaves no folder nor server behind
        shutil.copyfile(rdb, home / "dump.rdb")
        process = subprocess.Popen(
            ["redis-server", "--port", "0", "--unixsocket", str(socket_path),
             "--unixsocketperm", "700", "--dir", str(home), "--dbfilename", "dump.rdb",
             "--save", "", "--appendonly", "no", "--logfile", str(home / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        client = redis.Redis(
            unix_socket_path=str(socket_path), socket_timeout=10, decode_responses=True
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.ping():
                    break
            except redis.BusyLoadingError:
                pass
            except redis.ConnectionError:
                if process.poll() is not None:
                    log = (home / "redis.log").read_text(errors="replace").strip().splitlines()
                    raise BackupError(
                        f"scratch Redis did not load {rdb.name}: {log[-1] if log else '?'}"
                    ) from None
            if time.monotonic() > deadline:
                raise BackupError(f"scratch Redis did not load {rdb.name} within 30 s")
            time.sleep(0.05)
        yield client
    finally:
        if client is not None:
            client.close()
        if process is not None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        shutil.rmtree(home, ignore_errors=True)


CHATDB_COUNTS = {
    # table: the column that says when a row was written (None: count every row)
    "conversations": "created_at",
    "messages": '"timestamp"',
    "agents": None,
}


class DrillResult(Struct):
    """What the restore drill found in the restored copy."""

    restore_s: float
    restored_counts: dict[str, int]
    orphan_messages: int
    processed_ids: int
    processed_missing: list[str]
    redis_keys: dict[str, int]
    # The release the dump was made from and the scratch server's (`15.20`, `15.18`).
    dumped_from: str = ""
    scratch_version: str = ""
    # Column attribute options of a newer minor release that the scratch server refuses as
    # unknown, left out of the restore: option name -> how many columns had it.
    left_out: dict[str, int] = {}


# pg_dump writes a column's attribute options as a statement of their own after its CREATE
# TABLE, on one line, the options as array_to_string(attoptions, ', ') (dumpTableSchema).
_COLUMN_OPTIONS = re.compile(
    r"^(?P<head>ALTER (?:FOREIGN )?TABLE ONLY .+ ALTER COLUMN .+ SET )\((?P<options>[^()]*)\);$"
)
# In `pg_restore --list`: `;     Dumped from database version: 15.20 (Debian 15.20-0+deb12u1)`
_DUMPED_FROM = re.compile(r"^;\s+Dumped from database version: (\d+)(?:\.(\d+))?(?:\.(\d+))?", re.M)


def _version_num(match: re.Match[str]) -> int:
    """server_version_num of a version as written (15.20 is 150020; 9.6.24 is 90624)."""
    major, minor, patch = (int(part) if part else 0 for part in match.groups())
    return major * 10000 + (minor if major >= 10 else minor * 100 + patch)


def _refused_as_unknown(conn: psycopg.Connection[Any], name: str, value: str | None) -> bool:
    """Whether the scratch server refuses the column attribute option `name` as unknown (on a
    temporary table, rolled back); a known option with a bad value is not "unknown"."""
    from psycopg import errors, sql

    option = sql.Identifier(name) if value is None else sql.SQL("{} = {}").format(
        sql.Identifier(name), sql.Literal(value)
    )  # fmt: skip
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SET LOCAL lc_messages TO 'C'")  # the message is matched below
            conn.execute("CREATE TEMPORARY TABLE opsbook_drill_option (probe integer)")
            conn.execute(
                sql.SQL("ALTER TABLE opsbook_drill_option ALTER COLUMN probe SET ({})").format(
                    option
                )
            )
    except errors.InvalidParameterValue as exc:
        return exc.diag.message_primary == f'unrecognized parameter "{name}"'
    return False


def _without_refused_options(
    conn: psycopg.Connection[Any], schema: str
) -> tuple[str, dict[str, int]]:
    """The schema script without the column attribute options the scratch server refuses as
    unknown (a statement left with none is dropped); and how many columns had each."""
    lines = schema.split("\n")
    found = [(n, m) for n, line in enumerate(lines) if (m := _COLUMN_OPTIONS.match(line))]
    values: dict[str, str | None] = {}
    for _, match in found:
        for option in match["options"].split(", "):
            name, equals, value = option.partition("=")
            values.setdefault(name, value if equals else None)
    refused = {name for name, value in values.items() if _refused_as_unknown(conn, name, value)}
    left_out: dict[str, int] = {}
    for n, match in found:
        options = match["options"].split(", ")
        kept = [o for o in options if o.partition("=")[0] not in refused]
        for option in options:
            if option not in kept:
                name = option.partition("=")[0]
                left_out[name] = left_out.get(name, 0) + 1
        if len(kept) < len(options):
            lines[n] = f"{match['head']}({', '.join(kept)});" if kept else ""
    return "\n".join(lines), left_out


def _restore(scratch: Cluster, database: str, dump: Path) -> tuple[str, str, dict[str, int]]:
    """Restore `dump` into the scratch cluster's `database`: its schema (pre-data) through
    psql, then its rows, indexes and constraints (data, post-data) with pg_restore, each
    stopping at the first error. Returns the release it was dumped from, the scratch server's,
    and the column options left out (see the module's docstring)."""
    import psycopg

    where = ["-h", str(scratch.socket_dir), "-p", str(scratch.port), "-U", SUPERUSER]
    what = f"pg_restore of {dump.name} into a scratch cluster"
    pg_restore = scratch.tool("pg_restore")
    listing = run_tool([pg_restore, "--list", str(dump)], what=what)
    source = _DUMPED_FROM.search(listing)
    schema = run_tool(
        [pg_restore, "--section=pre-data", "--no-owner", "--no-privileges", "--file=-", str(dump)],
        what=what,
    )
    left_out: dict[str, int] = {}
    with psycopg.connect(scratch.dsn(database), autocommit=True) as conn:
        scratch_num = server_version_num(conn)
        shown = conn.execute("SHOW server_version").fetchone()
        scratch_version = str(shown[0]).split()[0] if shown else str(scratch_num)
        source_num = _version_num(source) if source else 0
        if source_num // 10000 == scratch_num // 10000 and source_num > scratch_num:
            schema, left_out = _without_refused_options(conn, schema)
    run_tool(
        [scratch.tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", *where, "-d", database,
         "-f", "-"],
        input=schema, what=f"{what}: its schema through psql",
    )  # fmt: skip
    run_tool(
        [pg_restore, "--section=data", "--section=post-data", "--no-owner", "--no-privileges",
         "--exit-on-error", *where, "-d", database, str(dump)],
        what=what,
    )  # fmt: skip
    dumped_from = ".".join(g for g in source.groups() if g) if source else "unknown"
    return dumped_from, scratch_version, left_out


def drill(info: BackupInfo, target: str, processed_queue: str) -> DrillResult:
    """Restore one PostgreSQL part into a scratch cluster and the backup's Redis parts into a
    scratch Redis, and read the counts and invariants from them (production is not touched)."""
    import psycopg

    dump = info.path / postgres_part(target)
    if not dump.is_file():
        raise BackupError(f"{info.name} has no {dump.name}")
    database = str(info.parts().get(dump.name, {}).get("database") or "chatdb")
    processed: list[str] = []
    redis_keys: dict[str, int] = {}
    for file, part in sorted(info.parts().items()):
        if part.get("kind") == "redis":
            with scratch_redis(info.path / file) as client:
                redis_keys[file] = int(client.dbsize())
                processed.extend(str(x) for x in client.lrange(processed_queue, 0, -1))
    with scratch_postgres() as scratch:
        where = ["-h", str(scratch.socket_dir), "-p", str(scratch.port), "-U", SUPERUSER]
        run_tool([scratch.tool("createdb"), *where, database],
                 what="createdb in the scratch cluster")  # fmt: skip
        began = time.monotonic()
        dumped_from, scratch_version, left_out = _restore(scratch, database, dump)
        restore_s = time.monotonic() - began
        with psycopg.connect(scratch.dsn(database), autocommit=True) as conn:
            present = {
                name for (name,) in conn.execute(
                    "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')"
                )
            }  # fmt: skip
            counts = {
                table: int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]
                for table in CHATDB_COUNTS
                if table in present
            }
            orphans = 0
            missing: list[str] = []
            if {"messages", "conversations"} <= present:
                orphans = int(conn.execute(
                    "SELECT count(*) FROM messages m LEFT JOIN conversations c"
                    " ON c.id = m.conversation_id WHERE c.id IS NULL"
                ).fetchone()[0])  # type: ignore[index]  # fmt: skip
                ids = [i for i in dict.fromkeys(processed) if _is_uuid(i)]
                found = {
                    str(row[0]) for row in conn.execute(
                        "SELECT id FROM messages WHERE id = ANY(%s::uuid[])", (ids,)
                    )
                }  # fmt: skip
                missing = [i for i in dict.fromkeys(processed) if i not in found]
    return DrillResult(
        restore_s, counts, orphans, len(set(processed)), missing, redis_keys,
        dumped_from=dumped_from, scratch_version=scratch_version, left_out=left_out,
    )  # fmt: skip


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
