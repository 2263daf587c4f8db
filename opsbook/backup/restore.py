"""Restoring a backup into production: PostgreSQL's rows, Redis's queue lists, the data paths.

Each store is restored so that a failure leaves it as it was: PostgreSQL in one transaction
(the dump is read in full before it begins), Redis's queue lists in one MULTI/EXEC, and each
data path unpacked beside itself first, then swapped in with the current one kept aside.
What the restore plan does around them (stopping the writers, the order, starting them again,
the health checks) is opsbook.remediation.backup.restore_backup's.
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
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
from opsbook.inventory import Postgres, Queues, Redis


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


# -- Redis: the queue lists ------------------------------------------------------------------


def queue_list_names(queues: Queues) -> tuple[str, ...]:
    """The lists a restore replaces: the queue, its dead letters, the processed ids and the
    consumers' in-flight lists (each further consumer's is IN_FLIGHT:NAME)."""
    return (queues.pending, queues.in_flight, queues.dead_letter, queues.processed)


def _further_in_flight(client: Any, queues: Queues) -> list[str]:
    pattern = f"{queues.in_flight}:*"
    return sorted(str(key) for key in client.scan_iter(match=pattern, count=1000))


def read_queue_lists(rdb: Path, queues: Queues) -> dict[str, list[str]]:
    """The queue lists an RDB snapshot holds, read from a scratch redis-server that loaded it
    (production is not touched); a list the snapshot does not hold is empty."""
    from opsbook.backup.restore_drill import scratch_redis

    with scratch_redis(rdb) as client:
        names = [*queue_list_names(queues), *_further_in_flight(client, queues)]
        found: dict[str, list[str]] = {}
        for name in names:
            kind = str(client.type(name))
            if kind not in ("list", "none"):
                raise BackupError(f"{rdb.name}: {name} is a {kind}, not a list")
            found[name] = [str(item) for item in client.lrange(name, 0, -1)]
    return found


def restore_queue_lists_command(spec: Redis, user: str, names: list[str]) -> str:
    return (
        f"as {user} on {spec.url.rpartition('@')[2]}: MULTI; DEL {' '.join(names)} "
        "(and any other in-flight list); RPUSH each list the backup's entries; EXEC"
    )


def restore_queue_lists(spec: Redis, lists: dict[str, list[str]]) -> dict[str, int]:
    """Replace the queue lists with `lists` in one MULTI/EXEC, as the admin (in-flight lists
    of consumers the backup does not know are deleted too). Returns each list's length then.

    Only the queue's lists: whatever else the server holds is left as it is, and no server
    setting or data directory is needed, so this works wherever the server runs."""
    client = redis_admin_client(spec)
    try:
        queues = spec.queues
        names = sorted({*lists, *_further_in_flight(client, queues)})
        with client.pipeline(transaction=True) as pipe:
            pipe.delete(*names)
            for name, items in lists.items():
                if items:
                    pipe.rpush(name, *items)
            pipe.execute()
        return {name: int(client.llen(name)) for name in names}
    except BackupError:
        raise
    except Exception as exc:
        raise BackupError(
            f"redis {spec.url.rpartition('@')[2]}: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        client.close()


# -- the data paths ----------------------------------------------------------------------------


def _member_of(path: Path) -> str:
    """The name tar gives `path` in an archive made from its absolute path."""
    return str(path).lstrip("/")


def check_data_archive(tar: Path, paths: list[Path]) -> int:
    """Read the archive through: every member under one of `paths`, nothing else (a name
    elsewhere, absolute or with `..`, is refused). Returns the number of members."""
    prefixes = [_member_of(p) for p in paths]
    try:
        with tarfile.open(tar) as archive:
            names = archive.getnames()
    except (OSError, tarfile.TarError) as exc:
        raise BackupError(f"reading {tar}: {exc}") from None
    stray = [
        n for n in names
        if ".." in Path(n).parts or not any(n == p or n.startswith(p + "/") for p in prefixes)
    ]  # fmt: skip
    if stray:
        raise BackupError(f"{tar.name} holds {stray[0]!r}, outside backup.data_paths")
    missing = [str(p) for p, prefix in zip(paths, prefixes, strict=True) if prefix not in names]
    if missing:
        raise BackupError(f"{tar.name} does not hold {', '.join(missing)}")
    return len(names)


@dataclass
class StagedData:
    """A data path unpacked from the archive beside itself, not yet in place."""

    path: Path  # the data path, as the inventory names it
    scratch: Path  # PARENT/.NAME.opsbook-restore-XXXX, on the same filesystem
    aside: Path | None = None  # where the current one went when the unpacked one took its place

    @property
    def unpacked(self) -> Path:
        return self.scratch / _member_of(self.path)


def unpack_data(tar: Path, paths: list[Path]) -> list[StagedData]:
    """Unpack each path's members beside it (PARENT/.NAME.opsbook-restore-XXXX), owners and
    modes as archived (tar's filter: nothing outside, no device files); nothing in place
    changes. On failure, what was unpacked is removed."""
    staged: list[StagedData] = []
    try:
        with tarfile.open(tar) as archive:
            members = archive.getmembers()
            for path in paths:
                path.parent.mkdir(parents=True, exist_ok=True)
                scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.opsbook-restore-",
                                                dir=path.parent))  # fmt: skip
                staged.append(StagedData(path, scratch))
                prefix = _member_of(path)
                chosen = [m for m in members if m.name == prefix or m.name.startswith(prefix + "/")]
                archive.extractall(scratch, members=chosen, filter="tar")
                if not staged[-1].unpacked.exists():
                    raise BackupError(f"{tar.name} does not hold {path}")
    except (OSError, tarfile.TarError) as exc:
        discard_unpacked(staged)
        raise BackupError(f"unpacking {tar.name}: {exc}") from None
    except BaseException:
        discard_unpacked(staged)
        raise
    return staged


def swap_in(staged: list[StagedData], stamp: str) -> None:
    """Put each unpacked path in place of the current one, which is renamed aside (same
    filesystem: two renames each)."""
    for each in staged:
        if each.path.exists() or each.path.is_symlink():
            each.aside = each.path.with_name(f".{each.path.name}.opsbook-before-restore-{stamp}")
            os.rename(each.path, each.aside)
        os.rename(each.unpacked, each.path)
        shutil.rmtree(each.scratch, ignore_errors=True)


def discard_unpacked(staged: list[StagedData]) -> list[str]:
    """Remove what was unpacked and not put in place; the scratch folders removed."""
    removed = []
    for each in staged:
        if each.scratch.exists():
            shutil.rmtree(each.scratch, ignore_errors=True)
            removed.append(str(each.scratch))
    return removed


def discard_aside(staged: list[StagedData]) -> list[str]:
    """Delete the data paths kept aside (once the restore is verified)."""
    removed = []
    for each in staged:
        if each.aside is not None and (each.aside.exists() or each.aside.is_symlink()):
            if each.aside.is_dir() and not each.aside.is_symlink():
                shutil.rmtree(each.aside)
            else:
                each.aside.unlink()
            removed.append(str(each.aside))
    return removed
