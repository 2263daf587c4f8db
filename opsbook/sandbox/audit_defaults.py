"""The `audit:` inventory section of a sandbox, and the sandbox's own .env file.

The sandbox runs on someone's machine, whose own accounts and listeners are not the sandbox's
to judge: the human accounts (UID 1000-59999) that exist and the sockets that already listen
on all interfaces when the inventory is written are taken as this machine's baseline. The
sandbox's own ports are never part of that baseline, so a sandbox service bound to all
interfaces fails the audit whenever the inventory was written.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from opsbook.probes.accounts import accounts
from opsbook.probes.sockets import listeners

ENV_FILE = ".env"
ENV_TEXT = (
    "# The sandbox's environment, as a compose deployment keeps it beside its compose file.\n"
    "# Passwords are not here: they are in secrets/*.password.\n"
    "COMPOSE_PROJECT_NAME=opsbook-sandbox\n"
)
HUMAN_UIDS = range(1000, 60000)


def ensure_env_file(directory: Path) -> Path:
    """Create DIR/.env with mode 0600 unless it exists (an existing file is left as it is,
    so that a later `up` never hides a mode the audit should see)."""
    path = Path(directory) / ENV_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path
    with os.fdopen(fd, "w", encoding="utf-8") as stream:
        stream.write(ENV_TEXT)
    return path


def _baseline_public_ports(exclude: set[int]) -> list[int]:
    try:
        done = subprocess.run(
            ["ss", "-ltnH"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return sorted(
        {s.port for s in listeners(done.stdout) if s.all_interfaces and s.port not in exclude}
    )


def audit_section(directory: Path, ports: Mapping[str, int]) -> dict[str, Any]:
    """The `audit:` section for the sandbox in `directory` whose components use `ports`."""
    directory = Path(directory).absolute()
    me = pwd.getpwuid(os.geteuid()).pw_name
    as_root = os.geteuid() == 0
    try:
        passwd = Path("/etc/passwd").read_text(encoding="utf-8")
    except OSError:
        passwd = ""
    humans = [a.name for a in accounts(passwd) if a.uid in HUMAN_UIDS and a.can_log_in]
    # Debian's postgresql package gives `postgres` a shell; the sandbox's server runs as it.
    login_users = ["root", *(["postgres"] if as_root else []), me, *humans]
    return {
        "secret_files": [
            str(directory / "secrets" / "*.password"),
            str(directory / ENV_FILE),
            str(directory / "redis" / "redis.conf"),  # holds the password hashes
            str(directory / "nginx" / "tls" / "key.pem"),  # the TLS listener's private key
        ],
        "secret_file_owner": me,
        "login_users": list(dict.fromkeys(login_users)),
        # As root, PostgreSQL runs as `postgres` and nginx's workers as `nobody`.
        "service_accounts": ["postgres", "nobody"] if as_root else [],
        "public_ports": _baseline_public_ports(set(ports.values())),
        "app_roles": ["chat_app"],
        "redis_app_users": ["chat_app"],
        # Every connection stays on 127.0.0.1, but the sandbox's PostgreSQL serves TLS as one
        # whose traffic leaves the host must, so that SEC-013 has something to judge.
        "require_ssl": True,
    }
