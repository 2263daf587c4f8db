"""A real OpenSSH server for the tests (Debian's openssh-server), private to a temporary folder.

It runs as a non-daemon (`sshd -D`) on a free loopback port with a throwaway host key, and lets
in one throwaway client key as the user running the tests. The client side is an ssh_config
file naming that key and a known_hosts file holding the host key, so that host keys are checked
for real: `Sshd.spec` is the testinfra host spec an inventory gives
(`ssh://root@127.0.0.1:PORT?ssh_config=...`).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from opsbook.loopback import free_port

SSHD = Path("/usr/sbin/sshd")
READY_DEADLINE_S = 20.0


def keypair(path: Path) -> Path:
    """A new ed25519 key without passphrase at PATH (and PATH.pub); returns PATH.pub."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "opsbook-test", "-f", str(path)],
        check=True, capture_output=True,
    )  # fmt: skip
    return path.with_name(path.name + ".pub")


def client_config(directory: Path, identity: Path, known_hosts: Path) -> Path:
    """An ssh_config that logs in with IDENTITY and trusts only the hosts in KNOWN_HOSTS."""
    config = directory / "ssh_config"
    config.write_text(
        "Host *\n"
        f"  IdentityFile {identity}\n"
        "  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {known_hosts}\n"
        "  GlobalKnownHostsFile /dev/null\n"
        "  StrictHostKeyChecking yes\n"
        "  LogLevel ERROR\n"
    )
    return config


def banner(port: int, timeout_s: float = 1.0) -> bool:
    """Whether an SSH server answers on 127.0.0.1:PORT with its version banner."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as connection:
            return connection.recv(64).startswith(b"SSH-")
    except OSError:
        return False


class Sshd:
    """One sshd process on 127.0.0.1, started and stopped by the test that owns it."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = free_port()
        self.user = getpass.getuser()
        host_key = directory / "host_key"
        host_public = keypair(host_key)
        self.identity = directory / "client_key"
        authorized = directory / "authorized_keys"
        authorized.write_bytes(keypair(self.identity).read_bytes())
        known_hosts = directory / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_public.read_text()}")
        self.config = directory / "sshd_config"
        self.config.write_text(
            f"Port {self.port}\n"
            "ListenAddress 127.0.0.1\n"
            f"HostKey {host_key}\n"
            f"AuthorizedKeysFile {authorized}\n"
            f"PidFile {directory / 'sshd.pid'}\n"
            "StrictModes no\n"  # the tmp folder's modes are the test's business
            "PermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "MaxStartups 100\n"
            "LogLevel INFO\n"  # one "Accepted publickey" line per connection: tests count them
        )
        self.ssh_config = client_config(directory, self.identity, known_hosts)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def spec(self) -> str:
        """The testinfra host spec that reaches this server."""
        return f"ssh://{self.user}@127.0.0.1:{self.port}?ssh_config={self.ssh_config}"

    def start(self) -> None:
        # sshd's privilege separation wants its empty folder, which the package's unit makes.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        with (self.dir / "sshd.log").open("ab") as log:
            self.process = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(self.config)],
                stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        end = time.monotonic() + READY_DEADLINE_S
        while not banner(self.port):
            if self.process.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"sshd did not start: {(self.dir / 'sshd.log').read_text()}")
            time.sleep(0.05)

    def connections(self) -> int:
        """How many connections this server has let in so far (its log says each)."""
        log = self.dir / "sshd.log"
        return log.read_text().count("Accepted publickey") if log.exists() else 0

    def stop(self) -> None:
        """Stop the listener and every connection it serves (its whole session)."""
        if self.process is None:
            return
        # Each connection's sshd starts a session of its own (setsid): end them by parent pid.
        children = subprocess.run(
            ["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        for pid in [*map(int, children), self.process.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        self.process.wait(timeout=10)
        self.process = None
