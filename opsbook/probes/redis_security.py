"""What Redis lets a client do: answer a stranger's PING, and each user's ACL.

The ACL facts are read as the checker's own user with ACL GETUSER and ACL DRYRUN; DRYRUN
judges a command against a user's rules without running it.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from msgspec import Struct

from opsbook.errors import NotEvaluated, TargetUnreachable

if TYPE_CHECKING:
    from opsbook.targets import RedisTarget

# --- a client that has not authenticated --------------------------------------------------


class StrangerPing(Struct, frozen=True):
    """What Redis answered a PING sent on a fresh connection without AUTH or HELLO."""

    answer: str  # the first line, cut to 120 characters

    @property
    def refused(self) -> bool:
        return refused_without_auth(self.answer.encode())


def refused_without_auth(answer: bytes) -> bool:
    """Whether a Redis server answered an unauthenticated PING with NOAUTH (or refused it)."""
    return answer.startswith((b"-NOAUTH", b"-WRONGPASS", b"-NOPERM"))


def unauthenticated_ping(target: RedisTarget) -> StrangerPing:
    """PING on a fresh socket, sending nothing else (redis-py 8 would send HELLO first)."""
    parts = urlsplit(target.spec.url)
    address = (parts.hostname or "127.0.0.1", parts.port or 6379)
    try:
        with socket.create_connection(address, timeout=target.timeout) as raw:
            stream: socket.socket = raw
            if parts.scheme == "rediss":
                import ssl  # a weekly audit's need; kept out of every run's start-up

                context = ssl.create_default_context()
                stream = context.wrap_socket(raw, server_hostname=address[0])
            stream.sendall(b"PING\r\n")
            answer = stream.recv(256)
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise TargetUnreachable("redis", target.name, target.where, reason) from None
    return StrangerPing(answer.decode("utf-8", "replace").strip()[:120])


# --- ACL -----------------------------------------------------------------------------------

GRANT_ACL = "ACL SETUSER {user} +acl|getuser +acl|dryrun"

# A sample of the @dangerous category that would hurt most in an application's hands, each
# with the arguments ACL DRYRUN needs to judge it.
DANGEROUS_COMMANDS: tuple[tuple[str, ...], ...] = (
    ("FLUSHALL",),
    ("FLUSHDB",),
    ("CONFIG", "SET", "dir", "/var/tmp"),  # noqa: S108 - never run: ACL DRYRUN
    ("CONFIG", "GET", "requirepass"),
    ("DEBUG", "SLEEP", "0"),
    ("SHUTDOWN",),
    ("ACL", "SETUSER", "intruder"),
    ("MODULE", "LOAD", "/var/tmp/module.so"),  # noqa: S108 - never run
    ("REPLICAOF", "127.0.0.1", "1"),
    ("KEYS", "*"),
    ("SAVE",),
    ("CLIENT", "KILL", "127.0.0.1:1"),
)


def checker_user(target: RedisTarget) -> str:
    """The Redis user opsbook logs in as (the URL's user; `default` without one)."""
    return urlsplit(target.spec.url).username or "default"


def _acl(target: RedisTarget, *args: str) -> Any:
    """ACL SUBCOMMAND as the checker; NotEvaluated, naming the grant, when it may not."""
    import redis

    user = checker_user(target)
    execute: Any = target.client().execute_command  # untyped in redis-py
    try:
        return execute("ACL", *args)
    except redis.exceptions.NoPermissionError as exc:
        denied = str(exc).rsplit(" ", 2)[-2]
        raise NotEvaluated(
            f"redis {target.name}: the checker user {user} may not run {denied}; grant it: "
            + GRANT_ACL.format(user=user)
        ) from None


def can_read_acl(target: RedisTarget) -> None:
    """NotEvaluated unless the checker may run both ACL GETUSER and ACL DRYRUN."""
    _acl(target, "DRYRUN", checker_user(target), "PING")
    _acl(target, "GETUSER", "default")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def acl_user(reply: Any) -> dict[str, Any]:
    """ACL GETUSER's answer as a mapping (redis-py parses RESP2 replies into one already)."""
    if isinstance(reply, Mapping):
        items: Iterable[tuple[Any, Any]] = reply.items()
    else:
        flat = list(reply or [])
        items = zip(flat[::2], flat[1::2], strict=False)
    user: dict[str, Any] = {}
    for key, value in items:
        if isinstance(value, list | tuple):
            user[_text(key)] = [_text(v) for v in value]
        else:
            user[_text(key)] = _text(value)
    return user


def open_default_user(user: Mapping[str, Any]) -> list[str]:
    """What makes a Redis user open to anyone: on, no password, and every command.

    Empty when it is off, needs a password, or is limited. Never returns password hashes.
    """
    flags = [str(f) for f in user.get("flags", [])]
    commands = user.get("commands", "")
    commands = " ".join(commands) if isinstance(commands, list) else str(commands)
    if "on" not in flags or "nopass" not in flags:
        return []
    everything = "+@all" in commands.split() or "allcommands" in flags
    return ["on", "nopass", *(["+@all"] if everything else [])]


def acl_evidence(user: Mapping[str, Any]) -> dict[str, Any]:
    """An ACL GETUSER answer without its password hashes, for the report."""
    return {k: v for k, v in user.items() if k not in ("passwords", "password")}


class AclUser(Struct, frozen=True):
    """A Redis user's ACL (ACL GETUSER), without its password hashes."""

    name: str
    rules: dict[str, Any]

    @property
    def open_to_anyone(self) -> list[str]:
        """`on nopass +@all` as far as it holds; empty when the user is protected."""
        return open_default_user(self.rules)


def acl_getuser(target: RedisTarget, name: str) -> AclUser:
    """A user's ACL; NotEvaluated when the checker may not read it."""
    can_read_acl(target)
    return AclUser(name, acl_evidence(acl_user(_acl(target, "GETUSER", name))))


class DangerousCommands(Struct, frozen=True):
    """For each user, the dangerous commands its ACL lets it run (ACL DRYRUN)."""

    allowed: dict[str, list[str]]  # user -> commands, as `CONFIG SET dir /var/tmp`
    missing_users: list[str]


def dangerous_commands(target: RedisTarget, users: Sequence[str]) -> DangerousCommands:
    """Which of DANGEROUS_COMMANDS each user may run; NotEvaluated when the checker may not
    ask."""
    import redis

    can_read_acl(target)
    allowed: dict[str, list[str]] = {}
    missing: list[str] = []
    for user in users:
        for command in DANGEROUS_COMMANDS:
            try:
                answer = _acl(target, "DRYRUN", user, *command)
            except redis.ResponseError as exc:
                if "not found" not in str(exc):
                    raise
                missing.append(user)
                break
            if answer in ("OK", b"OK"):
                allowed.setdefault(user, []).append(" ".join(command))
    return DangerousCommands(allowed, missing)
