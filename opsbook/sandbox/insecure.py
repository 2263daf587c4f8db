"""Make a running sandbox deliberately insecure, and undo it: the audit's proof.

    make_insecure(stack)   # trust in pg_hba.conf, Redis open on all interfaces,
                           # a world-readable .env, nginx server_tokens on
    make_secure(stack)     # undo all four; safe to run twice, or on a sandbox never touched
    legacy_tls(stack, on=True)  # nginx's TLS listener also accepts TLS 1.0 and 1.1 (apart:
                                # SEC-032's own proof); on=False puts back TLS 1.2 and 1.3 only

Everything is changed on the running processes (reloads, CONFIG SET, ACL SETUSER); nothing is
restarted. A restart of postgres or nginx would also undo their part, since `start` writes
their configuration afresh; Redis' part lives only in memory.

Privileges: the PostgreSQL superuser (over the sandbox's unix socket) and Redis' `default`
user (its password in DIR/secrets/redis-default.password). Binding Redis to 0.0.0.0 only
listens on more addresses of this machine; it never reaches out to another.
"""

from __future__ import annotations

import http.client
import socket
import time
from pathlib import Path
from typing import Any

from opsbook.sandbox.audit_defaults import ensure_env_file
from opsbook.sandbox.nginx import TLS_PROTOCOLS, Nginx
from opsbook.sandbox.postgres import Postgres
from opsbook.sandbox.process import SandboxError
from opsbook.sandbox.redis import secret_name
from opsbook.sandbox.stack import Stack

MARK = "# opsbook insecure variant"
TRUST_LINES = (
    f"local all all trust {MARK}\n",
    f"host all all 127.0.0.1/32 trust {MARK}\n",
)
# OpenSSL 3's default security level refuses TLS < 1.2 whatever ssl_protocols says.
LEGACY_TLS = "ssl_protocols TLSv1 TLSv1.1 TLSv1.2 TLSv1.3; ssl_ciphers DEFAULT:@SECLEVEL=0;"
RELOAD_DEADLINE_S = 5.0
TIMEOUT_S = 3.0


def _postgres(stack: Stack) -> Postgres:
    component = stack.component("postgres")
    assert isinstance(component, Postgres)
    return component


def _nginx(stack: Stack) -> Nginx:
    component = stack.component("nginx")
    assert isinstance(component, Nginx)
    return component


def _hba(stack: Stack, trust: bool) -> None:
    postgres = _postgres(stack)
    path = postgres.data / "pg_hba.conf"
    kept = [line for line in path.read_text(encoding="utf-8").splitlines(True) if MARK not in line]
    # First match wins: trust goes above the scram-sha-256 lines so that it really applies.
    lines = [*TRUST_LINES, *kept] if trust else kept
    path.write_text("".join(lines), encoding="utf-8")  # keeps owner and mode
    postgres.psql("SELECT pg_reload_conf();")


def _redis(stack: Stack, open_up: bool) -> None:
    import redis

    password = stack.layout.secret(secret_name("default"))
    # A nopass user accepts any password, so AUTH as default works in both states.
    client = redis.Redis(
        host="127.0.0.1", port=stack.state.ports["redis"], username="default",
        password=password, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S,
    )  # fmt: skip
    acl: Any = client.execute_command  # untyped in redis-py
    try:
        if open_up:
            acl("ACL", "SETUSER", "default", "on", "nopass", "~*", "&*", "+@all")
            client.config_set("protected-mode", "no")  # as the official image ships it
            client.config_set("bind", "0.0.0.0")  # noqa: S104 - the point: listen on all
        else:
            acl("ACL", "SETUSER", "default", "on", "resetpass", f">{password}", "~*", "&*", "+@all")
            client.config_set("bind", "127.0.0.1")
            client.config_set("protected-mode", "yes")
    finally:
        client.close()


def _env_file(stack: Stack, world_readable: bool) -> None:
    ensure_env_file(stack.dir).chmod(0o644 if world_readable else 0o600)


def _server_header(port: int) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        connection.request("GET", "/health")
        return connection.getresponse().getheader("Server") or ""
    except (OSError, http.client.HTTPException):
        return ""
    finally:
        connection.close()


def _server_tokens(stack: Stack, on: bool) -> None:
    nginx = _nginx(stack)
    text = nginx.config.read_text(encoding="utf-8")
    old, new = (
        ("server_tokens off;", "server_tokens on;")
        if on
        else ("server_tokens on;", "server_tokens off;")
    )
    nginx.config.write_text(text.replace(old, new), encoding="utf-8")
    nginx.reload()
    # The reload is asynchronous: new workers answer once the old ones have gone.
    port = stack.state.ports["nginx"]
    deadline = time.monotonic() + RELOAD_DEADLINE_S
    while ("/" in _server_header(port)) != on:
        if time.monotonic() > deadline:
            raise SandboxError(f"nginx: server_tokens {'on' if on else 'off'} not in effect")
        time.sleep(0.05)


def _accepts_tls1(port: int) -> bool:
    import ssl
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0 on purpose
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1"),
        ):
            return True
    except ssl.SSLError:
        return False


def legacy_tls(stack: Stack, *, on: bool) -> str:
    """nginx's TLS listener accepts TLS 1.0 and 1.1 too (on), or TLS 1.2 and 1.3 only, as `up`
    writes it (off); reloaded, and waited for until a TLS 1.0 handshake says so. Returns what
    was done."""
    nginx = _nginx(stack)
    if nginx.tls_port is None:
        raise SandboxError("nginx: this sandbox has no TLS listener")
    modern = f"ssl_protocols {TLS_PROTOCOLS};"
    old, new = (modern, LEGACY_TLS) if on else (LEGACY_TLS, modern)
    text = nginx.config.read_text(encoding="utf-8")
    nginx.config.write_text(text.replace(old, new), encoding="utf-8")
    nginx.reload()
    deadline = time.monotonic() + RELOAD_DEADLINE_S
    while _accepts_tls1(nginx.tls_port) != on:
        if time.monotonic() > deadline:
            raise SandboxError(f"nginx: TLS 1.0 {'accepted' if on else 'refused'} not in effect")
        time.sleep(0.05)
    return f"nginx: {new} (reloaded)"


def make_insecure(stack: Stack) -> list[str]:
    """Apply the four weaknesses to a running sandbox; returns what was done, one per line."""
    _hba(stack, trust=True)
    _redis(stack, open_up=True)
    _env_file(stack, world_readable=True)
    _server_tokens(stack, on=True)
    return [
        "postgres: trust lines first in pg_hba.conf (reloaded)",
        "redis: default user nopass +@all, bound to 0.0.0.0, protected-mode no",
        f"{Path(stack.dir) / '.env'}: mode 0644",
        "nginx: server_tokens on (reloaded)",
    ]


def make_secure(stack: Stack) -> None:
    """Undo make_insecure (idempotent): the sandbox is as `up` made it, with a 0600 .env."""
    _hba(stack, trust=False)
    _redis(stack, open_up=False)
    _env_file(stack, world_readable=False)
    _server_tokens(stack, on=False)
