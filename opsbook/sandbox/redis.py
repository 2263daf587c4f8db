"""Redis 7: the message queue, with ACL users and no unauthenticated access.

Users: `default` (admin, used by remediation), `chat_app` (list and connection commands on the
queue keys only) and `opsbook` (the checker: read-only). The config file holds only SHA-256
hashes of the passwords; the passwords are in secrets/redis-<user>.password.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

from opsbook.loopback import NETWORK_TIMEOUT_S
from opsbook.sandbox.base import Component, require_port
from opsbook.sandbox.process import Process

QUEUE_KEYS = (
    "message_queue",
    "message_queue:processing",
    "message_queue:processing:*",  # one in-flight list per extra worker (`sandbox scale`)
    "dead_letter_queue",
    "processed_messages",
)
USERS = ("default", "chat_app", "opsbook")

ACL_RULES = {
    "default": "~* &* +@all",
    # -@dangerous after +@connection: the app has no business with CLIENT KILL (SEC-022).
    "chat_app": " ".join(f"~{key}" for key in QUEUE_KEYS)
    + " -@all +@list +@connection -@dangerous",
    # Read-only. INFO, CLIENT LIST and SLOWLOG GET are "dangerous" but only read; added back.
    # ACL GETUSER / DRYRUN let the audit see who may do what (SEC-021, SEC-022).
    "opsbook": (
        "~* -@all +@read -@dangerous +ping +info +client|list +memory|usage +slowlog|get"
        " +acl|getuser +acl|dryrun"
    ),
}


def secret_name(user: str) -> str:
    return f"redis-{user}"


class Redis(Component):
    name = "redis"

    @property
    def home(self) -> Path:
        return self.layout.dir / "redis"

    @property
    def config(self) -> Path:
        return self.home / "redis.conf"

    def _process(self) -> Process:
        return Process(
            name=self.name,
            argv=["redis-server", str(self.config)],
            log=self.layout.log(self.name),
            pid_file=self.layout.pid_file(self.name),
        )

    def prepare(self) -> None:
        port = require_port(self)
        self.home.mkdir(parents=True, exist_ok=True)
        lines = [
            "bind 127.0.0.1",
            f"port {port}",
            "protected-mode yes",
            "daemonize no",
            f"dir {self.home}",
            f"logfile {self.layout.log(self.name)}",
            'save ""',
            "appendonly no",
            # `redis-cli --rdb` (the backup) would otherwise wait 5 s for replicas that never come.
            "repl-diskless-sync-delay 0",
            "maxmemory 64mb",
            "maxmemory-policy noeviction",
        ]
        for user in USERS:
            password = self.layout.secret(secret_name(user))
            digest = hashlib.sha256(password.encode()).hexdigest()
            lines.append(f"user {user} reset on #{digest} {ACL_RULES[user]}")
        fd = os.open(self.config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write("\n".join(lines) + "\n")

    def ready(self) -> bool:
        try:
            with socket.create_connection(
                ("127.0.0.1", require_port(self)), timeout=NETWORK_TIMEOUT_S
            ) as client:
                client.sendall(b"PING\r\n")
                answer = client.recv(64)
        except OSError:
            return False
        return answer.startswith((b"-NOAUTH", b"+PONG"))
