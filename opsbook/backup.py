"""opsbook's backups: take, list, verify, prune, restore, and the restore drill.

A backup is one directory in the inventory's `backup.dir`:

    opsbook-backup-20261127T020000Z/
        redis-queue.rdb          a Redis RDB snapshot per Redis target (`redis-cli --rdb`)
        postgres-chatdb.dump     pg_dump, custom format, per PostgreSQL target
        data.tar                 the inventory's backup.data_paths (only when it names some)
        manifest.json            per part: size, SHA-256, start and end; the backup's start/end

It is written under a hidden staging name (`.opsbook-backup-STAMP.partial`) and renamed into
place once the manifest is written, so a directory with the backup's name is always complete.
Redis is snapshotted before PostgreSQL: the worker stores a message before it lists its id in
processed_messages, so every id in the snapshot is in the later dump.

Credentials are the targets' `admin:` entries, read when a backup or restore runs and handed to
the tools through their environment (PGPASSWORD, REDISCLI_AUTH), never on a command line.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from msgspec import Struct

from opsbook.inventory import Admin, Inventory, Postgres, Redis

PG_BIN = Path(os.environ.get("OPSBOOK_PG_BIN", "/usr/lib/postgresql/15/bin"))
BACKUP_PREFIX = "opsbook-backup-"  # remediation/disk.py deletes only names with this prefix
MANIFEST = "manifest.json"
FORMAT = "opsbook-backup/1"
STAMP = "%Y%m%dT%H%M%SZ"
# Only directories named like this are opsbook's: retention never touches anything else.
NAME = re.compile(re.escape(BACKUP_PREFIX) + r"(?P<stamp>\d{8}T\d{6}Z)(?:-(?P<n>\d+))?")
DATA_PART = "data.tar"
COMMAND_TIMEOUT_S = 600
CHUNK = 1024 * 1024


class BackupError(Exception):
    """A backup or restore step failed; the message names the step, the command and why."""


# -- naming and reading -----------------------------------------------------------------------


def postgres_part(name: str) -> str:
    return f"postgres-{name}.dump"


def redis_part(name: str) -> str:
    return f"redis-{name}.rdb"


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class BackupInfo(Struct, frozen=True):
    """One of opsbook's backups on disk, as far as its directory and manifest tell."""

    path: Path
    manifest: dict[str, Any] | None  # None when manifest.json is missing or unreadable
    manifest_problem: str = ""

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def started(self) -> datetime:
        """When the backup began (the manifest's time; without one, the directory's mtime)."""
        if self.manifest is not None:
            with suppress(KeyError, TypeError, ValueError):
                return datetime.fromisoformat(str(self.manifest["started"]))
        return datetime.fromtimestamp(self.path.stat().st_mtime, UTC)

    def age_s(self, now: datetime | None = None) -> float:
        return ((now or _now()) - self.started).total_seconds()

    def parts(self) -> dict[str, dict[str, Any]]:
        if self.manifest is None:
            return {}
        parts = self.manifest.get("parts")
        return parts if isinstance(parts, dict) else {}


def read_backup(path: Path) -> BackupInfo:
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return BackupInfo(path, None, f"{MANIFEST} is missing")
    except (OSError, ValueError) as exc:
        return BackupInfo(path, None, f"{MANIFEST} is unreadable: {exc}")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return BackupInfo(path, None, f"{MANIFEST} is not an {FORMAT} manifest")
    return BackupInfo(path, manifest)


def list_backups(directory: Path) -> list[BackupInfo]:
    """opsbook's backups in `directory`, oldest first (staging directories are not listed)."""
    if not directory.is_dir():
        return []
    found = [
        read_backup(entry)
        for entry in directory.iterdir()
        if NAME.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink()
    ]
    return sorted(found, key=lambda info: _sort_key(info.name))


def _sort_key(name: str) -> tuple[str, int]:
    match = NAME.fullmatch(name)
    assert match is not None
    return match["stamp"], int(match["n"] or 1)


def latest_backup(directory: Path) -> BackupInfo | None:
    backups = list_backups(directory)
    return backups[-1] if backups else None


def find_backup(directory: Path, name: str) -> BackupInfo:
    """The backup called `name` (or `latest`); BackupError if there is none such."""
    if name == "latest":
        found = latest_backup(directory)
        if found is None:
            raise BackupError(f"no backup in {directory}")
        return found
    if not NAME.fullmatch(name) or not (directory / name).is_dir():
        raise BackupError(f"no backup {name!r} in {directory}")
    return read_backup(directory / name)


def verify(info: BackupInfo) -> list[str]:
    """What is wrong with a backup: missing parts, sizes or checksums that do not match."""
    if info.manifest is None:
        return [info.manifest_problem]
    problems = []
    parts = info.parts()
    if not parts:
        problems.append(f"{MANIFEST} lists no parts")
    for file, part in sorted(parts.items()):
        path = info.path / file
        if "/" in file or not path.is_file():
            problems.append(f"{file} is missing")
            continue
        size = path.stat().st_size
        if size != part.get("size"):
            problems.append(f"{file} has {size} bytes (manifest: {part.get('size')})")
            continue
        digest = sha256_of(path)
        if digest != part.get("sha256"):
            problems.append(
                f"{file} has SHA-256 {digest[:12]}... (manifest: {str(part.get('sha256'))[:12]}...)"
            )
    return problems


# -- taking a backup ------------------------------------------------------------------------


def _password(admin: Admin | None, what: str) -> tuple[str, str | None]:
    if admin is None:
        raise BackupError(
            f"{what} has no admin credentials in the inventory (admin: user, password)"
        )
    return admin.user, admin.password.resolve().reveal() if admin.password else None


def _run(argv: list[str], *, env: dict[str, str] | None = None, what: str, **kwargs: Any) -> str:
    shown = shlex.join(argv)
    try:
        done = subprocess.run(
            argv, env={**os.environ, **(env or {})}, capture_output=True, text=True,
            timeout=COMMAND_TIMEOUT_S, check=False, **kwargs,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackupError(f"{what}: {shown}: {exc}") from None
    if done.returncode != 0:
        error = (done.stderr or done.stdout).strip().splitlines()
        raise BackupError(
            f"{what}: {shown} exited {done.returncode}: {error[-1] if error else 'no output'}"
        )
    return str(done.stdout)


def pg_dump_command(spec: Postgres, user: str, out: Path) -> list[str]:
    return [
        str(PG_BIN / "pg_dump"), "--format=custom", "--no-password",
        "-h", spec.host, "-p", str(spec.port), "-U", user, "-d", spec.database, "-f", str(out),
    ]  # fmt: skip


def _pg_env(spec: Postgres, password: str | None) -> dict[str, str]:
    env = {"PGSSLMODE": spec.sslmode, "PGCONNECT_TIMEOUT": "10", "PGAPPNAME": "opsbook-backup"}
    if password is not None:
        env["PGPASSWORD"] = password
    return env


def redis_cli_args(spec: Redis, user: str) -> list[str]:
    url = urlsplit(spec.url)
    argv = ["redis-cli", "-h", url.hostname or "127.0.0.1", "-p", str(url.port or 6379)]
    if url.scheme == "rediss":
        argv.append("--tls")
    return [*argv, "--user", user, "--no-auth-warning"]


def _redis_env(password: str | None) -> dict[str, str]:
    return {"REDISCLI_AUTH": password} if password is not None else {}


def redis_admin_client(spec: Redis, timeout_s: float = 10.0) -> Any:
    import redis

    user, password = _password(spec.admin, "redis")
    url = urlsplit(spec.url)
    # The URL names the checker; the admin logs in instead.
    plain = url._replace(netloc=url.netloc.rpartition("@")[2]).geturl()
    return redis.Redis.from_url(
        plain, username=user, password=password, socket_timeout=timeout_s, decode_responses=True
    )


def _part(path: Path, kind: str, target: str, started: datetime, **extra: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "target": target,
        "size": path.stat().st_size,
        "sha256": sha256_of(path),
        "started": _iso(started),
        "finished": _iso(_now()),
        **extra,
    }


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _free_name(directory: Path, started: datetime) -> str:
    base = f"{BACKUP_PREFIX}{started:{STAMP}}"
    name, n = base, 1
    while (directory / name).exists() or (directory / f".{name}.partial").exists():
        n += 1
        name = f"{base}-{n}"
    return name


def plan_backup(inventory: Inventory) -> list[str]:
    """The commands a backup runs, for a remediation's plan (passwords from the environment)."""
    if inventory.backup is None:
        raise BackupError("the inventory has no backup: section")
    stage = inventory.backup.dir / ".opsbook-backup-STAMP.partial"
    lines = []
    for name, redis_spec in sorted(inventory.redis.items()):
        user = redis_spec.admin.user if redis_spec.admin else "?"
        argv = [*redis_cli_args(redis_spec, user), "--rdb", str(stage / redis_part(name))]
        lines.append("REDISCLI_AUTH=<admin password> " + shlex.join(argv))
    for name, spec in sorted(inventory.postgres.items()):
        user = spec.admin.user if spec.admin else "?"
        argv = pg_dump_command(spec, user, stage / postgres_part(name))
        lines.append("PGPASSWORD=<admin password> " + shlex.join(argv))
    if inventory.backup.data_paths:
        paths = [str(p) for p in inventory.backup.data_paths]
        lines.append(shlex.join(["tar", "-cf", str(stage / DATA_PART), *paths]))
    lines.append(f"write {MANIFEST}; mv {stage} {inventory.backup.dir}/{BACKUP_PREFIX}STAMP")
    return lines


def take_backup(inventory: Inventory) -> BackupInfo:
    """Take a complete backup now; the staging directory is removed if any part fails."""
    if inventory.backup is None:
        raise BackupError("the inventory has no backup: section")
    directory = inventory.backup.dir
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    started = _now()
    name = _free_name(directory, started)
    stage = directory / f".{name}.partial"
    stage.mkdir(mode=0o700)
    try:
        parts: dict[str, dict[str, Any]] = {}
        for target, redis_spec in sorted(inventory.redis.items()):
            parts.update(_redis_snapshot(target, redis_spec, stage))
        for target, spec in sorted(inventory.postgres.items()):
            out, begun = stage / postgres_part(target), _now()
            user, password = _password(spec.admin, f"postgres {target}")
            _run(pg_dump_command(spec, user, out), env=_pg_env(spec, password),
                 what=f"pg_dump of postgres {target}")  # fmt: skip
            parts[out.name] = _part(out, "postgres", target, begun, database=spec.database)
        if inventory.backup.data_paths:
            out, begun = stage / DATA_PART, _now()
            _tar(inventory.backup.data_paths, out)
            paths = [str(p) for p in inventory.backup.data_paths]
            parts[out.name] = _part(out, "data", "", begun, paths=paths)
        manifest = {
            "format": FORMAT,
            "name": name,
            "inventory": inventory.name,
            "started": _iso(started),
            "finished": _iso(_now()),
            "parts": parts,
        }
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        for each in stage.iterdir():
            with each.open("rb") as stream:
                os.fsync(stream.fileno())
        stage.rename(directory / name)
        _fsync_dir(directory)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return read_backup(directory / name)


def _redis_snapshot(target: str, spec: Redis, stage: Path) -> dict[str, dict[str, Any]]:
    out, begun = stage / redis_part(target), _now()
    user, password = _password(spec.admin, f"redis {target}")
    client = redis_admin_client(spec)
    try:
        keys = int(client.dbsize())
    except Exception as exc:
        raise BackupError(f"redis {target}: DBSIZE as {user}: {exc}") from None
    finally:
        client.close()
    # Asks the server for a full sync, as a replica would: a consistent point-in-time RDB.
    _run([*redis_cli_args(spec, user), "--rdb", str(out)], env=_redis_env(password),
         what=f"RDB snapshot of redis {target}")  # fmt: skip
    if not out.is_file() or out.stat().st_size == 0:
        raise BackupError(f"RDB snapshot of redis {target}: redis-cli wrote no data to {out}")
    return {out.name: _part(out, "redis", target, begun, keys=keys)}


def _tar(paths: tuple[Path, ...], out: Path) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise BackupError(f"tar of backup.data_paths: missing {', '.join(missing)}")
    try:
        with tarfile.open(out, "w") as archive:
            for path in paths:
                archive.add(path)
    except OSError as exc:
        raise BackupError(f"tar of backup.data_paths into {out}: {exc}") from None


# -- retention ------------------------------------------------------------------------------


def past_retention(
    directory: Path, retention_days: int, now: datetime | None = None
) -> list[BackupInfo]:
    """opsbook's backups older than the retention; the newest backup is always kept, so that
    retention never leaves a deployment with no backup at all."""
    backups = list_backups(directory)
    limit = retention_days * 86400
    return [info for info in backups[:-1] if info.age_s(now) > limit]


def prune(directory: Path, retention_days: int) -> list[str]:
    """Delete opsbook's backups past the retention (never another file); their names."""
    deleted = []
    for info in past_retention(directory, retention_days):
        shutil.rmtree(info.path)
        deleted.append(info.name)
    return deleted


# -- restoring into production -----------------------------------------------------------------


def _toc(dump: Path) -> list[str]:
    return _run([str(PG_BIN / "pg_restore"), "-l", str(dump)], what=f"reading {dump}").splitlines()


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
    import psycopg

    user, password = _password(spec.admin, "postgres")
    entries = [m for line in _toc(dump) if (m := _TOC_ENTRY.match(line))]
    tables = [(m["schema"], m["name"]) for m in entries if m["kind"] == "TABLE DATA"]
    if not tables:
        raise BackupError(f"{dump} holds no table data")
    with psycopg.connect(
        host=spec.host, port=spec.port, dbname=spec.database, user=user, password=password,
        sslmode=spec.sslmode, connect_timeout=10, application_name="opsbook-restore",
    ) as conn:  # fmt: skip
        references = [
            (str(child), str(parent))
            for child, parent in conn.execute(
                "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint"
                " WHERE contype = 'f'"
            ).fetchall()
        ]
    references = [(_qualify(c), _qualify(p)) for c, p in references]
    ordered = _fk_order(tables, references)
    line_of = {(m["schema"], m["name"]): m.string for m in entries if m["kind"] == "TABLE DATA"}
    listing = [line_of[table] for table in ordered]
    listing += [m.string for m in entries if m["kind"] == "SEQUENCE SET"]
    with tempfile.TemporaryDirectory(prefix="opsbook-restore-") as scratch:
        list_file = Path(scratch) / "restore.list"
        list_file.write_text("\n".join(listing) + "\n", encoding="utf-8")
        script = _run(
            [str(PG_BIN / "pg_restore"), "--data-only", "-L", str(list_file), "-f", "-", str(dump)],
            what=f"pg_restore of {dump.name}",
        )
    names = ", ".join(f'"{schema}"."{name}"' for schema, name in ordered)
    sql = f"TRUNCATE {names};\n{script}"
    _run(
        [str(PG_BIN / "psql"), "-X", "-q", "--single-transaction", "-v", "ON_ERROR_STOP=1",
         "-h", spec.host, "-p", str(spec.port), "-U", user, "-d", spec.database, "-f", "-"],
        env=_pg_env(spec, password), input=sql, what=f"restoring {dump.name} into {spec.database}",
    )  # fmt: skip
    with psycopg.connect(
        host=spec.host, port=spec.port, dbname=spec.database, user=user, password=password,
        sslmode=spec.sslmode, connect_timeout=10, application_name="opsbook-restore",
    ) as conn:  # fmt: skip
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


# -- the restore drill: a scratch PostgreSQL and a scratch Redis ------------------------------


def _as_postgres() -> dict[str, Any]:
    if os.geteuid() != 0:
        return {}
    import pwd

    entry = pwd.getpwnam("postgres")
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


@dataclass
class Scratch:
    """A throwaway PostgreSQL cluster: unix socket only, in a private temp directory."""

    home: Path
    port: int
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def socket_dir(self) -> str:
        return str(self.home / "run")

    def dsn(self, database: str) -> str:
        return f"host={self.socket_dir} port={self.port} dbname={database} user=postgres"


@contextmanager
def scratch_postgres() -> Iterator[Scratch]:
    """initdb and start a private cluster; always stopped and deleted afterwards.

    It listens on no TCP port at all, only on a socket in a 0700 directory of its own, so it
    cannot clash with another server nor be reached by anyone else (`trust` is safe there).
    """
    from opsbook.loopback import free_port

    home = Path(tempfile.mkdtemp(prefix="opsbook-drill-", dir="/tmp"))
    scratch = Scratch(home, free_port())
    drop = _as_postgres()
    try:
        (home / "run").mkdir(mode=0o700)
        if drop:
            home.chmod(0o711)
            for path in (home, home / "run"):
                os.chown(path, drop["user"], drop["group"])
        _run([str(PG_BIN / "initdb"), "-D", str(home / "data"), "-U", "postgres", "--auth=trust",
              "--encoding=UTF8", "--locale=C", "--no-sync"],
             what="initdb of the scratch cluster", cwd=home, **drop)  # fmt: skip
        log = (home / "postgres.log").open("ab")
        scratch.process = subprocess.Popen(
            [str(PG_BIN / "postgres"), "-D", str(home / "data"), "-p", str(scratch.port),
             "-k", scratch.socket_dir, "-c", "listen_addresses=", "-c", "fsync=off",
             "-c", "full_page_writes=off", "-c", "synchronous_commit=off"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=home,
            start_new_session=True, **drop,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 30
        while subprocess.run(
            [str(PG_BIN / "pg_isready"), "-q", "-h", scratch.socket_dir, "-p", str(scratch.port)],
            check=False, timeout=10,
        ).returncode != 0:  # fmt: skip
            if scratch.process.poll() is not None or time.monotonic() > deadline:
                tail = (home / "postgres.log").read_text(errors="replace").strip().splitlines()
                raise BackupError(f"scratch PostgreSQL did not start: {tail[-1] if tail else '?'}")
            time.sleep(0.1)
        yield scratch
    finally:
        if scratch.process is not None and scratch.process.poll() is None:
            scratch.process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                scratch.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(scratch.process.pid, signal.SIGKILL)
                scratch.process.wait(5)
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
        _run([str(PG_BIN / "createdb"), "-h", scratch.socket_dir, "-p", str(scratch.port),
              "-U", "postgres", database], what="createdb in the scratch cluster")  # fmt: skip
        began = time.monotonic()
        _run([str(PG_BIN / "pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error",
              "-h", scratch.socket_dir, "-p", str(scratch.port), "-U", "postgres",
              "-d", database, str(dump)],
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
