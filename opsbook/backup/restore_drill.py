"""The restore drill: the latest backup restored into a scratch PostgreSQL cluster and a
scratch Redis, its counts and invariants read there; production is never touched.

The scratch cluster is the same PostgreSQL component the sandbox runs (opsbook.postgres_cluster),
started for the drill only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from msgspec import Struct

from opsbook.backup.manifest import BackupInfo, postgres_part
from opsbook.backup.tools import BackupError, run_tool
from opsbook.loopback import free_port
from opsbook.postgres_cluster import SUPERUSER, Cluster, ClusterError

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
        run_tool([scratch.tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error",
                  *where, "-d", database, str(dump)],
                 what=f"pg_restore of {dump.name} into a scratch cluster")  # fmt: skip
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
    return DrillResult(restore_s, counts, orphans, len(set(processed)), missing, redis_keys)


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
