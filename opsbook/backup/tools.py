"""The client tools a backup runs (pg_dump, pg_restore, psql, redis-cli): where they are, their
command lines, the environment that carries the credentials, and how they are run.

Credentials are the targets' `admin:` entries, read when a tool runs and handed to it through
its environment (PGPASSWORD, REDISCLI_AUTH), never on a command line.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from opsbook.inventory import Admin, Postgres, Redis
from opsbook.postgres_cluster import pg_tool

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
        error = (done.stderr or done.stdout).strip().splitlines()
        raise BackupError(
            f"{what}: {shown} exited {done.returncode}: {error[-1] if error else 'no output'}"
        )
    return str(done.stdout)


def pg_dump_command(spec: Postgres, user: str, out: Path) -> list[str]:
    return [
        pg_tool("pg_dump"), "--format=custom", "--no-password",
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
