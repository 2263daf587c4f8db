"""Hosts over ssh, against a real OpenSSH server (the `sshd` fixture): one connection per host
and run, a connect timeout, and a host that cannot be reached reported as one ERROR line.

"Unreachable" here is what the machines allow (loopback only): a closed port, a name that does
not resolve (.invalid never does, RFC 6761), a port whose listener never answers.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sshd_server import Sshd, keypair
from support import CheckRun

from opsbook.errors import TargetUnreachable
from opsbook.inventory import Host
from opsbook.loopback import free_port
from opsbook.targets import HostTarget

REPO = Path(__file__).resolve().parent.parent
HANG_BOUND_S = 30.0  # a bound against a hang, far above the 1 s connect timeout


def established(port: int) -> int:
    """How many TCP connections to 127.0.0.1:PORT are established (ss)."""
    done = subprocess.run(
        ["ss", "-Htn", "state", "established", "dst", f"127.0.0.1:{port}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return len(done.stdout.splitlines())


def unreachable(spec: str, timeout_s: float = 1.0) -> TargetUnreachable:
    target = HostTarget("web1", Host(spec=spec), timeout_s)
    with pytest.raises(TargetUnreachable) as raised:
        target.reachable()
    # Cached: a second check of the same host does not try again.
    with pytest.raises(TargetUnreachable) as again:
        target.reachable()
    assert again.value is raised.value
    return raised.value


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts TCP connections (the kernel's backlog) but never says a
    word: ssh waits for the server's banner, as with a hung host."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@pytest.fixture
def stalling_port() -> Iterator[int]:
    """A loopback port whose server says its SSH banner, then nothing more: a host that stalls
    in the key exchange."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError):  # the listener closed at the end of the test
            while True:
                connection, _ = listener.accept()
                connection.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
                accepted.append(connection)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    yield listener.getsockname()[1]
    listener.close()
    for connection in accepted:
        connection.close()


def test_commands_on_a_host_share_one_ssh_connection(sshd: Sshd) -> None:
    host = HostTarget("app1", Host(spec=sshd.spec), 3.0)
    host.reachable()
    for _ in range(5):
        assert host.testinfra.run("echo %s", "over ssh").stdout == "over ssh\n"
    assert host.testinfra.file(str(sshd.config)).exists
    # Another target (a fix, a runtime) for the same host rides the same master connection.
    again = HostTarget("app1", Host(spec=sshd.spec), 3.0)
    assert again.testinfra.check_output("hostname") == socket.gethostname()
    assert established(sshd.port) == 1


def test_a_host_lost_during_the_run_is_unreachable_naming_it(sshd: Sshd) -> None:
    host = HostTarget("app1", Host(spec=sshd.spec), 1.0)
    host.reachable()
    sshd.stop()  # the listener and the master connection's session
    with pytest.raises(TargetUnreachable) as raised:
        host.testinfra.run("true")
    assert raised.value.line().startswith(f"unreachable: host app1 (ssh://{sshd.user}@127.0.0.1")
    assert "RuntimeError" not in raised.value.line()


def test_a_refused_port_is_unreachable_with_ssh_s_reason() -> None:
    port = free_port()
    error = unreachable(f"ssh://ops@127.0.0.1:{port}")
    where = f"ssh://ops@127.0.0.1:{port}"
    assert error.line() == f"unreachable: host web1 ({where}): Connection refused"


def test_a_name_that_does_not_resolve_is_unreachable() -> None:
    error = unreachable("ssh://ops@web1.invalid")
    assert error.line().startswith("unreachable: host web1 (ssh://ops@web1.invalid): ")
    assert "Could not resolve hostname web1.invalid" in error.reason


def test_a_host_that_never_answers_costs_one_connect_timeout(silent_port: int) -> None:
    started = time.monotonic()
    error = unreachable(f"ssh://ops@127.0.0.1:{silent_port}", timeout_s=1.0)
    assert time.monotonic() - started < HANG_BOUND_S
    assert "timed out" in error.reason


def test_a_host_that_stalls_after_its_banner_costs_one_timeout_too(stalling_port: int) -> None:
    started = time.monotonic()
    error = unreachable(f"ssh://ops@127.0.0.1:{stalling_port}", timeout_s=1.0)
    assert time.monotonic() - started < HANG_BOUND_S
    assert error.reason == f"Connection to 127.0.0.1 port {stalling_port} timed out"


def test_a_password_in_the_spec_never_reaches_the_line() -> None:
    port = free_port()
    error = unreachable(f"ssh://ops:hunter2@127.0.0.1:{port}?timeout=1")
    assert "hunter2" not in error.line()
    assert f"(ssh://ops@127.0.0.1:{port})" in error.line()


def run_checks(inventory: Path, tmp_path: Path, *args: str) -> CheckRun:
    reports = tmp_path / "reports"
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", f"--inventory={inventory}",
        f"--reports-dir={reports}", *args,
    ]  # fmt: skip
    process = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    return CheckRun(process, reports)


# Daily checks of a host (named, so that a host check added later does not change the count).
HOST_CHECKS = ("RES-001", "RES-002", "LOG-001")


def test_an_unreachable_ssh_host_is_one_error_line_and_exit_10(sshd: Sshd, tmp_path: Path) -> None:
    closed = free_port()
    log = tmp_path / "chat.log"
    log.write_text("backend: listening on :8000\n")
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(
        "name: ssh-hosts\n"
        "hosts:\n"
        f"  app1: {{spec: '{sshd.spec}', logs: ['{log}']}}\n"
        f"  app2: {{spec: 'ssh://ops@127.0.0.1:{closed}', logs: [/var/log/chat.log]}}\n"
        # This machine's own disk and memory use are not under test.
        "thresholds: {timeout_s: 2, memory_used_percent: 100, disk_used_percent: 100}\n"
    )
    run = run_checks(inventory, tmp_path, f"--check={','.join(HOST_CHECKS)}")
    assert run.exit_code == 10, run.output
    line = f"unreachable: host app2 (ssh://ops@127.0.0.1:{closed}): Connection refused"
    for check_id in HOST_CHECKS:
        assert run.outcome(check_id, "app1") == "passed", run.output
        assert run.outcome(check_id, "app2") == "error", run.output
        assert run.row(check_id, "app2").get("unreachable") is True
    assert f"{line}  (3 checks not evaluated)" in run.output
    assert "Traceback" not in run.output
    assert "testinfra.host.Host" not in run.output
    # The three checks of app1 shared one connection, which the run closed when it ended.
    assert sshd.connections() == 1
    assert established(sshd.port) == 0


def test_a_key_the_host_refuses_is_unreachable_with_ssh_s_reason(
    sshd: Sshd, tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger"
    keypair(stranger)
    config = sshd.ssh_config.read_text().replace(str(sshd.identity), str(stranger))
    (tmp_path / "stranger_config").write_text(config)
    spec = sshd.spec.replace(str(sshd.ssh_config), str(tmp_path / "stranger_config"))
    assert unreachable(spec).reason == "Permission denied (publickey)"


def test_a_host_key_that_does_not_match_is_unreachable(sshd: Sshd, tmp_path: Path) -> None:
    impostor = keypair(tmp_path / "impostor").read_text()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {impostor}")
    config = tmp_path / "config"
    config.write_text(
        sshd.ssh_config.read_text().replace(str(sshd.dir / "known_hosts"), str(known_hosts))
    )
    error = unreachable(sshd.spec.replace(str(sshd.ssh_config), str(config)))
    assert error.reason == "Host key verification failed"


class SilentServer:
    """A loopback port that accepts connections and never says a word, counting how many are
    open at once."""

    def __init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port: int = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.open = self.most = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self.listener.accept()
                with self.lock:
                    self.open += 1
                    self.most = max(self.most, self.open)
                threading.Thread(target=self._hold, args=(connection,), daemon=True).start()

    def _hold(self, connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):
            while connection.recv(1024):
                pass
        with self.lock:
            self.open -= 1


def test_hosts_that_never_answer_are_waited_for_together(tmp_path: Path) -> None:
    server = SilentServer()
    try:
        inventory = tmp_path / "inventory.yaml"
        inventory.write_text(
            "name: ssh-hosts\n"
            "hosts:\n"
            f"  app1: {{spec: 'ssh://one@127.0.0.1:{server.port}'}}\n"
            f"  app2: {{spec: 'ssh://two@127.0.0.1:{server.port}'}}\n"
            "thresholds: {timeout_s: 1}\n"
        )
        run = run_checks(inventory, tmp_path, "--check=RES-002")
    finally:
        server.listener.close()
    assert run.exit_code == 10, run.output
    assert run.outcome("RES-002", "app1") == run.outcome("RES-002", "app2") == "error"
    assert "timed out" in run.row("RES-002", "app2")["message"]
    # Both hosts were waited for at the same time, not one timeout after the other.
    assert server.most == 2


# Run in a mount namespace of its own: a probe of a host whose name goes to the given resolver.
PROBE_BEHIND_RESOLVER = """
import sys, time
from opsbook.errors import TargetUnreachable
from opsbook.inventory import Host
from opsbook.targets import HostTarget
started = time.monotonic()
try:
    HostTarget("web1", Host(spec=sys.argv[1]), 1.0).reachable()
    print("reached")
except TargetUnreachable as exc:
    print(exc.line())
print(f"{time.monotonic() - started:.1f}")
"""


def test_a_resolver_that_never_answers_costs_one_timeout(tmp_path: Path) -> None:
    """ssh's ConnectTimeout does not cover the look-up of the host's name: a resolver that
    never answers (a loopback DNS address whose socket reads nothing) would hold the probe for
    the resolver's own timeouts and retries. The probe looks the name up itself, bounded by the
    timeout. The probe runs in a mount namespace of its own (unshare, as root) whose
    /etc/resolv.conf names that resolver, so the machine's own is left alone."""
    own_namespace = ["unshare", "-m", "mount", "--bind", "/etc/resolv.conf", "/etc/resolv.conf"]
    if subprocess.run(own_namespace, capture_output=True, check=False).returncode != 0:
        pytest.skip("no mount namespace of its own here (unshare -m and mount need root)")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.77\noptions timeout:5 attempts:2\n")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.77", 53))  # receives the questions, answers none (root: port 53)
        started = time.monotonic()
        done = subprocess.run(
            ["unshare", "-m", "sh", "-c",
             'mount --bind "$1" /etc/resolv.conf && shift && exec "$@"', "sh", str(resolv),
             sys.executable, "-c", PROBE_BEHIND_RESOLVER, "ssh://nobody@web1.example:22"],
            capture_output=True, text=True, timeout=HANG_BOUND_S * 2, cwd=REPO,
        )  # fmt: skip
        elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    said, _ = done.stdout.splitlines()
    assert said.endswith("no answer from DNS for web1.example within 1 s"), said
    assert elapsed < 1 + 5 + 5, done.stdout  # a bound against a hang: the resolver's own is 20 s
