"""Secret rotation (the incident runbook): the application's credentials replaced, everywhere.

Not linked to any check: a person asks for it (`python -m opsbook secrets rotate`), after a
leak or on schedule. The credentials are those the inventory's `credentials:` names: the
application's PostgreSQL role and Redis user (in the sandbox and the compose stack: chat_app),
and any API key. opsbook's own monitoring and admin credentials are never rotated here: the
plan needs the admin for every step, and rotating it would lock opsbook out half-way.

For each credential, in order: a new secret (`secrets.token_urlsafe`, 256 bits) is written to
the file the inventory names (a temporary file renamed over it, with the file's own mode and
owner; the old file kept as FILE.previous, mode 0600); the server is told (PostgreSQL: the
admin role sets the role's password from a SCRAM-SHA-256 verifier, so the clear value never
reaches the server or its log; Redis: `ACL SETUSER USER resetpass #SHA-256`, then `CONFIG
REWRITE` where Redis was started from a config file, unless the credential says that Redis's
own start reads the secret file, as the sandbox's and the compose stack's does). Then the
services that read them (their consumers) are restarted through their runtimes (recreated on
compose, whose bind-mounted secret files a running container keeps seeing as they were);
then the old secret must be refused and the new one accepted by the server, every service
must answer, and the canary must get a message through.

A secret's value never reaches a plan, a step's result, the audit log or the terminal: they
name the credential, its file and the files' SHA-256, nothing more; the command's redactor is
also told every value read or made (`rotating(on_secret=...)`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import msgspec

from opsbook.canary import admin_client, admin_connection, run_canary, wait_ready
from opsbook.inventory import Credential, Inventory
from opsbook.remediate.context import Context
from opsbook.remediate.plan import Plan, StepKind
from opsbook.remediate.runtime import Runtime, runtime_of
from opsbook.secrets import scram_verifier

KIND = StepKind.ROTATE
NEW_SECRET_BYTES = 32  # token_urlsafe(32): 43 characters, 256 bits
PREVIOUS_SUFFIX = ".previous"
PREVIOUS_MODE = 0o600
CANARY_HOP_S = 30.0  # per hop, as after a deploy or a restore
# Where the sandbox's PostgreSQL lets the admin role set the application role's password
# (opsbook/sandbox/postgres.py: PostgreSQL 15 has no narrower right than CREATEROLE).
SET_PASSWORD_FUNCTION = "public.opsbook_set_password(name, text)"  # noqa: S105 (a name)


class RotationUnsupported(Exception):
    """Nothing opsbook may rotate as asked: no such credential, opsbook's own credential, no
    admin to change it with, or no runtime to restart its consumers (one line)."""


@dataclass
class _Secret:
    """One credential being rotated: its old and new values, once the step has read and made
    them (never shown)."""

    name: str
    credential: Credential
    old: str | None = None
    new: str | None = None

    @property
    def file(self) -> Path:
        return self.credential.file

    @property
    def target(self) -> str:
        """The postgres or redis entry that holds it (an API key has none)."""
        return self.credential.target or ""

    def values(self) -> tuple[str, str]:
        """The old and the new secret, once the file's step has run."""
        if self.old is None or self.new is None:
            raise RuntimeError(f"{self.name}: its secret file was not written by this plan")
        return self.old, self.new

    @property
    def previous(self) -> Path:
        return self.file.with_name(self.file.name + PREVIOUS_SUFFIX)

    def label(self) -> str:
        """`postgres-app (chat_app on postgres chatdb)`, `llm-key (API key)`."""
        c = self.credential
        if c.kind == "api_key":
            return f"{self.name} (API key)"
        return f"{self.name} ({c.user or 'default'} on {c.kind} {c.target})"


def credentials_to_rotate(inventory: Inventory, only: str | None) -> list[tuple[str, Credential]]:
    """The credentials `--only` selects (all when None): `postgres`, `redis` or `api_key` (a
    kind), or a credential's name; RotationUnsupported when none is."""
    found = inventory.credentials
    if not found:
        raise RotationUnsupported(
            "the inventory names no credentials to rotate (credentials: in docs/inventory.md)"
        )
    if only is None:
        return sorted(found.items())
    chosen = sorted((n, c) for n, c in found.items() if only in (n, c.kind))
    if not chosen:
        raise RotationUnsupported(
            f"--only {only}: no such credential or kind (credentials: {', '.join(sorted(found))};"
            " kinds: postgres, redis, api_key)"
        )
    return chosen


def _refuse_own(inventory: Inventory, name: str, credential: Credential) -> None:
    """RotationUnsupported when the credential is one opsbook itself logs in with."""
    own: dict[str, str] = {}
    if credential.kind == "postgres" and credential.target is not None:
        spec = inventory.postgres[credential.target]
        if spec.admin is None:
            raise RotationUnsupported(
                f"{name}: postgres {credential.target} has no admin in the inventory to change "
                "the password with"
            )
        own = {spec.admin.user: "admin role", spec.user: "monitoring role"}
    if credential.kind == "redis" and credential.target is not None:
        spec_r = inventory.redis[credential.target]
        if spec_r.admin is None:
            raise RotationUnsupported(
                f"{name}: redis {credential.target} has no admin in the inventory to change "
                "the password with"
            )
        own = {
            spec_r.admin.user: "admin user",
            urlsplit(spec_r.url).username or "default": "checker",
        }
    user = credential.user or "default"
    if user in own:
        raise RotationUnsupported(
            f"{name}: {user} is opsbook's own {own[user]} on {credential.kind} "
            f"{credential.target}: rotating it would lock opsbook out mid-plan; rotate it by hand"
        )


def _consumers(inventory: Inventory, credential: Credential) -> list[str]:
    """The services that read the credential: its own list, else those that depend on its
    target's service (monitoring aside), in the order of `services:`."""
    if credential.consumers is not None:
        return list(credential.consumers)
    served = inventory.service_of(credential.target or "")
    return [
        name
        for name, service in inventory.services.items()
        if served in service.depends_on and service.role != "monitoring"
    ]


def _restart_verb(runtime: Runtime) -> str:
    # compose bind-mounts each secret file: a running container keeps the inode it was given,
    # and the rename made a new one; only a new container sees the new file.
    return "recreate" if runtime.name == "compose" else "restart"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomically(path: Path, data: bytes, mode: int, uid: int, gid: int) -> None:
    """Write `path` whole or not at all: a temporary file beside it, renamed over it."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            owned = os.fstat(stream.fileno())
            if (owned.st_uid, owned.st_gid) != (uid, gid):
                os.fchown(stream.fileno(), uid, gid)
            os.fchmod(stream.fileno(), mode)
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _write_step(each: _Secret, on_secret: Callable[[str], None]) -> Callable[[], str]:
    def write() -> str:
        before = each.file.stat()
        old = each.file.read_bytes()
        each.old = old.decode("utf-8").strip()
        each.new = secrets.token_urlsafe(NEW_SECRET_BYTES)
        on_secret(each.old)
        on_secret(each.new)
        new = (each.new + "\n").encode()
        _write_atomically(each.previous, old, PREVIOUS_MODE, before.st_uid, before.st_gid)
        mode = stat.S_IMODE(before.st_mode)
        _write_atomically(each.file, new, mode, before.st_uid, before.st_gid)
        return (
            f"wrote {each.file} (mode {mode:04o}, sha256 {_sha256(new)}); the old one "
            f"(sha256 {_sha256(old)}) kept as {each.previous}"
        )

    return write


def _put_back(each: _Secret) -> str:
    """The old file in place again (the server still has the old secret)."""
    before = each.file.stat()
    data = each.previous.read_bytes()
    _write_atomically(each.file, data, stat.S_IMODE(before.st_mode), before.st_uid, before.st_gid)
    return f"{each.file} put back as it was"


def _undoing(each: _Secret, change: Callable[[], str]) -> Callable[[], str]:
    """Run the server's change; when it fails, put the old file back before saying so, so that
    the consumers' next start still finds the secret the server has."""

    def action() -> str:
        try:
            return change()
        except Exception as exc:
            try:
                undone = _put_back(each)
            except OSError as undo:
                undone = f"{each.file} NOT put back ({undo}): copy {each.previous} over it"
            raise RuntimeError(f"{exc}; {undone}") from exc

    return action


def _postgres_change(ctx: Context, each: _Secret) -> Callable[[], str]:
    def change() -> str:
        import psycopg
        from psycopg import sql

        spec = ctx.inventory.postgres[each.target]
        role = each.credential.user or ""
        verifier = scram_verifier(each.values()[1])
        with admin_connection(spec, ctx.thresholds.timeout_s) as conn:
            row = conn.execute("SELECT to_regprocedure(%s) IS NOT NULL", (SET_PASSWORD_FUNCTION,))
            narrow = bool(row.fetchone()[0])
            try:
                if narrow:
                    conn.execute("SELECT public.opsbook_set_password(%s, %s)", (role, verifier))
                else:
                    conn.execute(
                        sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                            sql.Identifier(role), sql.Literal(verifier)
                        )
                    )
            except psycopg.errors.InsufficientPrivilege:
                raise PermissionError(
                    f"{spec.admin.user if spec.admin else 'the admin'} may not change {role}'s "
                    "password on this server (it needs CREATEROLE, or the sandbox's "
                    "opsbook_set_password)"
                ) from None
        how = "opsbook_set_password" if narrow else "ALTER ROLE"
        return f"{role}'s password changed on postgres {each.credential.target} ({how})"

    return change


def _redis_change(ctx: Context, each: _Secret) -> Callable[[], str]:
    def change() -> str:
        spec = ctx.inventory.redis[each.target]
        user = each.credential.user or "default"
        digest = hashlib.sha256(each.values()[1].encode()).hexdigest()
        client = admin_client(spec, ctx.thresholds.timeout_s)
        try:
            client.execute_command("ACL", "SETUSER", user, "resetpass", f"#{digest}")
            config_file = str(client.info("server").get("config_file") or "")
            if config_file and not each.credential.server_reads_file:
                client.execute_command("CONFIG", "REWRITE")
        finally:
            client.close()
        if each.credential.server_reads_file:
            kept = f"kept across a restart of Redis: its start reads {each.file}"
        elif config_file:
            kept = f"written into {config_file} by CONFIG REWRITE"
        else:
            kept = (
                "NOT kept across a restart of Redis (it has no config file), unless what starts "
                f"it reads {each.file}"
            )
        return f"{user}'s password changed on redis {each.target}; {kept}"

    return change


def _postgres_answer(ctx: Context, each: _Secret, password: str) -> str | None:
    """None when the role logs in with `password`; else libpq's reason."""
    import psycopg

    spec = ctx.inventory.postgres[each.target]
    try:
        with psycopg.connect(
            host=spec.host, port=spec.port, dbname=spec.database, user=each.credential.user,
            password=password, sslmode=spec.sslmode,
            connect_timeout=max(2, round(ctx.thresholds.timeout_s)),
            application_name="opsbook-rotation",
        ) as conn:  # fmt: skip
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        return str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return None


def _redis_answer(ctx: Context, each: _Secret, password: str) -> str | None:
    """None when the user logs in with `password` (and PING answers); else why not."""
    import redis

    spec = ctx.inventory.redis[each.target]
    url = urlsplit(spec.url)
    client = redis.Redis(
        host=url.hostname or "127.0.0.1", port=url.port or 6379,
        username=each.credential.user or "default", password=password,
        socket_timeout=ctx.thresholds.timeout_s,
        socket_connect_timeout=ctx.thresholds.timeout_s, ssl=url.scheme == "rediss",
    )  # fmt: skip
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    return None


def _refused(reason: str | None) -> bool:
    """Whether a login failed because of the secret itself, not because nothing answered."""
    if reason is None:
        return False
    words = reason.lower()
    return "password" in words or "wrongpass" in words or "authentication" in words


def _secrets_verified(ctx: Context, rotated: list[_Secret]) -> list[str]:
    """For each PostgreSQL and Redis credential: the old secret refused, the new accepted;
    RuntimeError naming what was not."""
    seen = []
    for each in rotated:
        kind = each.credential.kind
        if kind == "api_key":
            continue
        answer = _postgres_answer if kind == "postgres" else _redis_answer
        old_secret, new_secret = each.values()
        old, new = answer(ctx, each, old_secret), answer(ctx, each, new_secret)
        if not _refused(old):
            raise RuntimeError(
                f"{each.label()}: the old secret is "
                + ("still accepted" if old is None else f"not refused for its own sake: {old}")
            )
        if new is not None:
            raise RuntimeError(f"{each.label()}: the new secret is refused: {new}")
        seen.append(f"{each.label()}: old refused, new accepted")
    return seen


def _served_now(inventory: Inventory) -> Inventory:
    """The inventory without the public entries an incident's containment holds closed: they
    are not to answer, and the canary then goes to the backend."""
    from opsbook.remediation.containment import contained_service

    closed = {n for n in inventory.http if contained_service(inventory, n) is not None}
    if not closed:
        return inventory
    return msgspec.structs.replace(
        inventory,
        http={n: e for n, e in inventory.http.items() if n not in closed},
        services={
            name: msgspec.structs.replace(
                service, targets=tuple(t for t in service.targets if t not in closed)
            )
            for name, service in inventory.services.items()
        },
    )


def _healthy(ctx: Context, rotated: list[_Secret]) -> Callable[[], str]:
    def verify() -> str:
        seen = _secrets_verified(ctx, rotated)
        inventory = _served_now(ctx.inventory)
        deadline = inventory.deploy.readiness_deadline_s
        ready = wait_ready(inventory, deadline)
        if not ready.ready:
            waiting = "; ".join(f"{what}: {why}" for what, why in ready.not_ready.items())
            raise RuntimeError(f"rotated, but not ready after {ready.waited_s:.0f} s: {waiting}")
        canary = run_canary(inventory, CANARY_HOP_S)
        if canary.failed_hop == "setup":  # nothing to send it through: said, not failed
            sent = f"no canary: {canary.problem}"
        elif canary.failed_hop:
            raise RuntimeError(f"rotated, but the canary failed: {canary.problem}")
        else:
            sent = f"canary passed ({canary.hops_ms.get('total')} ms)"
        return "; ".join([*seen, f"ready in {ready.waited_s:.1f} s", sent])

    return verify


def rotate_credentials(ctx: Context, *, apply: bool) -> Plan:
    """Rotate the application's credentials: new secrets in their files, on their servers, in
    the services that read them.

    Changes: for each credential of the inventory's `credentials:`, writes a new random secret
    to its file (renamed over it, same mode and owner; the old file kept as FILE.previous, mode
    0600); PostgreSQL: the admin role sets the role's password from a SCRAM verifier; Redis:
    ACL SETUSER resetpass with the new SHA-256, and CONFIG REWRITE where Redis has a config
    file its start does not write from the secret file (server_reads_file). Then restarts the
    services that read them through their runtimes (recreates them on compose), and verifies
    that the old secrets are refused and the new accepted, that every service answers and that
    the canary gets through. An API key is only written and its consumers restarted: its check
    is their health. From the server's change until the consumers have restarted, their new
    connections fail. Raises RotationUnsupported for opsbook's own credentials (its admin or
    monitoring login) or when no runtime can restart a consumer.
    Privileges: writing the secret files (their owner, or root); the inventory's admin role
    (PostgreSQL: CREATEROLE, or the sandbox's opsbook_set_password; Redis: ACL SETUSER and
    CONFIG REWRITE); control of the consumers' runtimes.
    Undo: each FILE.previous holds the old secret: copy it over FILE, set it on the server as
    this plan does, restart the consumers; or rotate again (a new secret, equally good).
    """
    return _rotate(ctx, apply, None, lambda value: None)


def rotating(only: str | None, on_secret: Callable[[str], None]) -> Callable[..., Plan]:
    """rotate_credentials for the credentials `--only` selects; `on_secret` is told every secret
    value read or made (the command's redactor), and the plan is named rotate_credentials."""

    def rotate(ctx: Context, *, apply: bool) -> Plan:
        return _rotate(ctx, apply, only, on_secret)

    return functools.update_wrapper(rotate, rotate_credentials)


def _rotate(ctx: Context, apply: bool, only: str | None, on_secret: Callable[[str], None]) -> Plan:
    plan = Plan.for_fix(ctx)
    inventory = ctx.inventory
    rotated: list[_Secret] = []
    consumers: dict[str, None] = {}
    for name, credential in credentials_to_rotate(inventory, only):
        _refuse_own(inventory, name, credential)
        if not credential.file.is_file():
            raise RotationUnsupported(f"{name}: no secret file {credential.file}")
        rotated.append(_Secret(name, credential))
        consumers.update(dict.fromkeys(_consumers(inventory, credential)))
    runtimes: dict[str, Runtime] = {}
    for service in consumers:
        runtime = runtime_of(inventory, service)
        if runtime is None:
            raise RotationUnsupported(
                f"no runtime drives {service}, which reads a rotated secret (name one under "
                "services: in the inventory)"
            )
        why = runtime.refusal(_restart_verb(runtime), service)
        if why is not None:
            raise RotationUnsupported(f"{runtime.name} runtime: cannot restart {service}: {why}")
        runtimes[service] = runtime
    for each in rotated:
        c = each.credential
        owner = inventory.service_of(c.target) if c.target else each.name
        plan.add(
            f"write a new secret for {each.label()} into its file, the old kept aside",
            f"install -m 600 {c.file} {each.previous}; "
            f"<new secret, token_urlsafe({NEW_SECRET_BYTES})> > {c.file.parent}/.{c.file.name}"
            f".PID.tmp (the file's mode and owner); mv it over {c.file}",
            KIND,
            _write_step(each, on_secret),
            service=owner,
        )
        if c.kind == "postgres" and c.target is not None:
            admin = inventory.postgres[c.target].admin
            plan.add(
                f"set {c.user}'s new password on postgres {c.target}",
                f"ALTER ROLE {c.user} PASSWORD '<SCRAM-SHA-256 verifier of the new secret>' "
                f"(as {admin.user if admin else 'the admin'}; through {SET_PASSWORD_FUNCTION} "
                "where the server has it)",
                KIND,
                _undoing(each, _postgres_change(ctx, each)),
                service=owner,
            )
        elif c.kind == "redis" and c.target is not None:
            plan.add(
                f"set {c.user or 'default'}'s new password on redis {c.target}",
                f"ACL SETUSER {c.user or 'default'} resetpass #<sha256 of the new secret>"
                + (
                    f" (no CONFIG REWRITE: Redis's start reads {c.file})"
                    if c.server_reads_file
                    else "; CONFIG REWRITE (where Redis has a config file)"
                ),
                KIND,
                _undoing(each, _redis_change(ctx, each)),
                service=owner,
            )
    for service, runtime in runtimes.items():
        verb = _restart_verb(runtime)

        def restart(service: str = service, runtime: Runtime = runtime, verb: str = verb) -> str:
            if verb == "recreate":
                runtime.recreate(service)
                return "recreated"
            runtime.restart(service)
            return "restarted"

        plan.add(
            f"{verb} {service}, which reads the rotated credentials",
            runtime.command(verb, service),
            KIND,
            restart,
            service=service,
        )
    plan.add(
        "verify: the old secrets refused and the new accepted, every service answers, the "
        "canary gets through",
        "log in as each rotated user with the old secret (refused) and the new (accepted); "
        "every HTTP /health, PostgreSQL SELECT 1, Redis PING; POST /api/messages, its row, "
        "GET /api/messages/ID",
        KIND,
        _healthy(ctx, rotated),
        service=next(iter(consumers), inventory.name),
    )
    return plan.finish(apply, ctx.gate)
