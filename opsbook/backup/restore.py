"""Restoring a backup into production: PostgreSQL's rows, Redis's snapshot."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from opsbook.backup.tools import (
    BackupError,
    admin_login,
    pg_client,
    pg_env,
    postgres_admin_connection,
    redis_admin_client,
    run_tool,
    server_major,
)
from opsbook.inventory import Postgres, Redis


def _toc(pg_restore: str, dump: Path) -> list[str]:
    return run_tool([pg_restore, "-l", str(dump)], what=f"reading {dump}").splitlines()


_TOC_ENTRY = re.compile(
    r"^\d+; \d+ \d+ (?P<kind>TABLE DATA|SEQUENCE SET) (?P<schema>\S+) (?P<name>\S+) "
)


def _fk_order(
    tables: list[tuple[str, str]], references: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """Tables in an order where each comes after the tables its foreign keys reference."""
    parents: dict[str, set[str]] = {}
    for child, parent in references:
        if child != parent:
            parents.setdefault(child, set()).add(parent)
    pending, ordered = list(tables), []
    while pending:
        waiting = {f"{schema}.{name}" for schema, name in pending}
        ready = [
            t for t in pending if not parents.get(f"{t[0]}.{t[1]}", set()) & waiting
        ] or pending[:1]  # a cycle: keep the dump's order for the rest
        ordered.extend(ready)
        pending = [t for t in pending if t not in ready]
    return ordered


def restore_postgres_command(spec: Postgres, user: str, dump: Path) -> str:
    return (
        f"psql --single-transaction -v ON_ERROR_STOP=1 -h {spec.host} -p {spec.port} -U {user} "
        f"-d {spec.database}  <<< 'TRUNCATE <the dump's tables>;' + "
        f"$(pg_restore --data-only -L <tables in FK order> -f - {dump})"
    )


def restore_postgres(spec: Postgres, dump: Path) -> dict[str, int]:
    """Replace the rows of the dump's tables with the dump's, in one transaction.

    Data only: the schema must exist (a lost table needs `pg_restore --clean` as the database
    owner). As the admin role, which owns the tables. Returns the restored row counts.
    """
    user, password = admin_login(spec.admin, "postgres")
    with postgres_admin_connection(spec, "opsbook-restore") as conn:
        # pg_restore and psql of the server's own version: what they write is what it reads.
        major = server_major(conn)
        references = [
            (str(child), str(parent))
            for child, parent in conn.execute(
                "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint"
                " WHERE contype = 'f'"
            ).fetchall()
        ]
    pg_restore = pg_client("pg_restore", major, f"restoring {dump.name}")
    psql = pg_client("psql", major, f"restoring {dump.name}")
    entries = [m for line in _toc(pg_restore, dump) if (m := _TOC_ENTRY.match(line))]
    tables = [(m["schema"], m["name"]) for m in entries if m["kind"] == "TABLE DATA"]
    if not tables:
        raise BackupError(f"{dump} holds no table data")
    references = [(_qualify(c), _qualify(p)) for c, p in references]
    ordered = _fk_order(tables, references)
    line_of = {(m["schema"], m["name"]): m.string for m in entries if m["kind"] == "TABLE DATA"}
    listing = [line_of[table] for table in ordered]
    listing += [m.string for m in entries if m["kind"] == "SEQUENCE SET"]
    with tempfile.TemporaryDirectory(prefix="opsbook-restore-") as scratch:
        list_file = Path(scratch) / "restore.list"
        list_file.write_text("\n".join(listing) + "\n", encoding="utf-8")
        script = run_tool(
            [pg_restore, "--data-only", "-L", str(list_file), "-f", "-", str(dump)],
            what=f"pg_restore of {dump.name}",
        )
    names = ", ".join(f'"{schema}"."{name}"' for schema, name in ordered)
    sql = f"TRUNCATE {names};\n{script}"
    run_tool(
        [psql, "-X", "-q", "--single-transaction", "-v", "ON_ERROR_STOP=1",
         "-h", spec.host, "-p", str(spec.port), "-U", user, "-d", spec.database, "-f", "-"],
        env=pg_env(spec, password), input=sql, what=f"restoring {dump.name} into {spec.database}",
    )  # fmt: skip
    with postgres_admin_connection(spec, "opsbook-restore") as conn:
        return {
            name: int(conn.execute(f'SELECT count(*) FROM "{schema}"."{name}"').fetchone()[0])  # type: ignore[index]
            for schema, name in ordered
        }


def _qualify(name: str) -> str:
    return name if "." in name else f"public.{name}"


def restore_redis_command(spec: Redis, user: str, rdb: Path, service: str, restart: str) -> str:
    return (
        f"CONFIG GET dir dbfilename appendonly (as {user}); cp {rdb} DIR/.opsbook-restore.rdb; "
        f"SHUTDOWN NOSAVE; mv DIR/.opsbook-restore.rdb DIR/DBFILENAME; {restart}"
    )


def restore_redis(spec: Redis, rdb: Path, restart: Any) -> int:
    """Load an RDB snapshot into the Redis server: stop it without saving, put the snapshot in
    place of its dump file, start it through `restart()`. Returns the keys it then holds.

    Needs the server's data directory on this machine (the sandbox, a native install) and
    appendonly off (with AOF on, Redis would load the AOF instead)."""
    client = redis_admin_client(spec)
    try:
        settings: dict[str, str] = {}
        for key in ("dir", "dbfilename", "appendonly"):
            settings.update(client.config_get(key))
        if settings.get("appendonly") == "yes":
            raise BackupError("redis has appendonly yes: it would load its AOF, not the snapshot")
        data_dir = Path(settings["dir"])
        if not data_dir.is_dir():
            raise BackupError(f"redis data directory {data_dir} is not on this machine")
        staged = data_dir / ".opsbook-restore.rdb"
        shutil.copyfile(rdb, staged)
        client.shutdown(nosave=True)
    finally:
        client.close()
    os.replace(staged, data_dir / settings["dbfilename"])
    restart()
    client = redis_admin_client(spec)
    try:
        return int(client.dbsize())
    finally:
        client.close()
