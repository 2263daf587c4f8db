"""The client tools a backup runs (pg_dump, pg_restore, psql, redis-cli): where they are, their
command lines, the environment that carries the credentials, and how they are run.

PostgreSQL's are those of the server's major version (asked as the admin role, the login they
use), else a newer one's, never an older one's (opsbook.pg_tools).

Credentials are the targets' `admin:` entries, read when a tool runs and handed to it through
its environment (PGPASSWORD, REDISCLI_AUTH), never on a command line.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opsbook.inventory import Admin, Postgres, Redis
from opsbook.pg_tools import PgToolsError, client_tool, major_of

if TYPE_CHECKING:
    import psycopg

COMMAND_TIMEOUT_S = 600


class BackupError(Exception):
    """A backup or restore step failed; the message names the step, the command and why."""


def admin_login(admin: Admin | None, what: str) -> tuple[str, str | None]:
    """(user, password) of a target's admin entry; BackupError when it has none."""
    if admin is None:
        raise BackupError(
            f"{what} has no admin credentials in the inventory (admin: user, password)"
        )
    return admin.user, admin.password.resolve().reveal() if admin.password else None


def run_tool(
    argv: list[str], *, env: dict[str, str] | None = None, what: str, **kwargs: Any
) -> str:
    """Run a tool with the command timeout; its stdout, or BackupError naming `what`."""
    shown = shlex.join(argv)
    try:
        done = subprocess.run(
            argv, env={**os.environ, **(env or {})}, capture_output=True, text=True,
            timeout=COMMAND_TIMEOUT_S, check=False, **kwargs,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackupError(f"{what}: {shown}: {exc}") from None
    if done.returncode != 0:
        raise BackupError(
            f"{what}: {shown} exited {done.returncode}: {_error_line(done.stderr or done.stdout)}"
        )
    return str(done.stdout)


# `pg_restore: error: could not execute query: ERROR:  ...`, `psql:<stdin>:71: ERROR:  ...`
_ERROR_LINE = re.compile(r"\b(?:error|fatal):", re.IGNORECASE)


def _error_line(output: str) -> str:
    """The line that says why a tool failed: its first error line (pg_restore follows it with
    the whole statement, "Command was: ..."), else its last line."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "no output"
    return next((line for line in lines if _ERROR_LINE.search(line)), last)


def postgres_admin_connection(spec: Postgres, application: str) -> psycopg.Connection[Any]:
    """A connection as the target's admin role (BackupError when it cannot be opened)."""
    import psycopg

    user, password = admin_login(spec.admin, "postgres")
    try:
        return psycopg.connect(
            host=spec.host, port=spec.port, dbname=spec.database, user=user, password=password,
            sslmode=spec.sslmode, connect_timeout=10, application_name=application,
        )  # fmt: skip
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()
        raise BackupError(
            f"postgres {spec.host}:{spec.port}/{spec.database} as {user}: "
            f"{reason[-1] if reason else type(exc).__name__}"
        ) from None


def server_major(conn: psycopg.Connection[Any]) -> int:
    """The major version of the server behind `conn`, as SHOW server_version_num says."""
    from opsbook.probes.postgres import server_version_num

    return major_of(server_version_num(conn))


def pg_client(name: str, major: int, what: str) -> str:
    """The path of PostgreSQL's `name` program for a server of `major`; BackupError naming
    `what`, the versions and the places looked in when only older ones are installed."""
    try:
        return str(client_tool(name, major))
    except PgToolsError as exc:
        raise BackupError(f"{what}: {exc}") from None


def pg_dump_command(pg_dump: str, spec: Postgres, user: str, out: Path) -> list[str]:
    return [
        pg_dump, "--format=custom", "--no-password",
        "-h", spec.host, "-p", str(spec.port), "-U", user, "-d", spec.database, "-f", str(out),
    ]  # fmt: skip


def pg_env(spec: Postgres, password: str | None) -> dict[str, str]:
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


def redis_env(password: str | None) -> dict[str, str]:
    return {"REDISCLI_AUTH": password} if password is not None else {}


def redis_admin_client(spec: Redis, timeout_s: float = 10.0) -> Any:
    import redis

    user, password = admin_login(spec.admin, "redis")
    url = urlsplit(spec.url)
    # The URL names the checker; the admin logs in instead.
    plain = url._replace(netloc=url.netloc.rpartition("@")[2]).geturl()
    return redis.Redis.from_url(
        plain, username=user, password=password, socket_timeout=timeout_s, decode_responses=True
    )
