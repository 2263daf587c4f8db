"""The runtimes' matrix (docs/remediation.md#runtimes), cell by cell, on real things.

- `command`: a real process (a shell service that notes its reloads) driven by the inventory's
  commands, on this machine and over a real sshd (the `sshd` fixture).
- `systemd`: a container that boots systemd as PID 1 (Podman, `--systemd=always`, built from
  tests/data/systemd-host on the local base image), reached over ssh as a user whose sudo
  allows systemctl only. Needs the `podman` CLI (scripts/setup-container-engine); skipped,
  with the reason, without it. The first build takes about 40 s, later ones reuse the layers.
  HEALTH-001's fix is applied end to end there to a stopped backend unit (python3's
  http.server as chat-backend.service, published on loopback), through systemctl and through
  the `command` runtime's own commands; and the daily checks of that host run over ssh.
- Maintenance mode on that host (`opsbook maintenance on|off`, the issue's proof): nginx.service,
  in front of the backend with opsbook's maintenance switch, its flag created and removed with
  `sudo -n touch`/`rm -f` and the unit reloaded (systemd's `maintenance_flag`), or by the
  inventory's `maintenance_on`/`maintenance_off` commands (command): 503 with the page from
  here, the frontend's HEALTH-001 not applicable as "maintenance mode is on", then 200; refused
  in one line without those settings.
- `sandbox`: every verb on the session's native stack (`breakable_sandbox`).
- `compose`: start, stop, status, reload and maintenance on a real compose project (one stack
  for the module, as tests/checks/test_compose_checks.py builds it; restart, recreate and scale
  are in tests/fixes/test_compose_remediation.py). What a runtime refuses needs no stack.
- Incident containment (`opsbook incident contain|release`, the issue's proof) on both the
  compose stack and the systemd host: the public port refused from here, then /health 200
  (on the sandbox: tests/test_containment.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sshd_server import Sshd, banner, client_config, keypair
from support import CheckRun, eventually
from test_compose_checks import (  # one compose stack for the module, built the same way
    RunCompose,
    compose_stack,
    container,
    docker,
    run_compose,
    runtime,
)
from test_containment import connection_refused, opsbook_incident
from test_maintenance import opsbook_maintenance

from opsbook.errors import TargetUnreachable
from opsbook.inventory import Inventory, load_inventory
from opsbook.loopback import http_status
from opsbook.remediate.plan import Refused
from opsbook.remediate.runtime import (
    ComposeRuntime,
    Runtime,
    RuntimeCommandFailed,
    Unsupported,
    maintenance_served,
    runtime_named,
    runtime_of,
)
from opsbook.sandbox.compose import ComposeStack
from opsbook.sandbox.stack import Stack
from opsbook.targets import HttpTarget

__all__ = ["compose_stack", "run_compose", "runtime"]  # fixtures, used by name

REPO = Path(__file__).resolve().parent.parent
SYSTEMD_IMAGE = "localhost/opsbook-systemd-host:test"
BOOT_DEADLINE_S = 90.0

# A service that runs until stopped and notes each SIGHUP (a reload) in DIR/reloads.
SERVICE_SCRIPT = """\
#!/bin/sh
trap 'echo reloaded >> "$1/reloads"' HUP
trap 'kill "$child" 2>/dev/null; exit 0' TERM
while :; do
    sleep 3600 &
    child=$!
    wait "$child"
done
"""


def load(tmp_path: Path, text: str) -> Inventory:
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    return load_inventory(path, environ={})


def refused_line(runtime: Runtime, verb: str, service: str, *args: str) -> str:
    """The one line with which `runtime` refuses `verb` (from the action and from the plan)."""
    why = runtime.refusal(verb, service)
    assert why is not None, f"{runtime.name} does {verb} {service}"
    plan = (
        (lambda: runtime.maintenance_command(True, service))
        if verb == "maintenance"
        else (lambda: runtime.command(verb, service, *args))
    )
    with pytest.raises(Unsupported) as planned:
        plan()
    action = {
        "recreate": lambda: runtime.recreate(service),
        "scale": lambda: runtime.scale(service, int(args[0]) if args else 2),
        "reload": lambda: runtime.reload(service),
        "maintenance": lambda: runtime.maintenance(True, service),
    }[verb]
    with pytest.raises(Unsupported) as acted:
        action()
    assert isinstance(acted.value, Refused)  # the runner reports it as REFUSED
    line = str(acted.value)
    assert line == str(planned.value) == f"{runtime.name} runtime: cannot {verb} {service}: {why}"
    assert "\n" not in line
    return line


# -- the command runtime ---------------------------------------------------------------------------


@dataclass
class EchoService:
    """A real process driven by the command runtime: its files and its inventory entry."""

    dir: Path

    @property
    def pid_file(self) -> Path:
        return self.dir / "pid"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def reloads(self) -> int:
        path = self.dir / "reloads"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def commands(self, *, reload: bool = True) -> str:
        script, pid = self.dir / "echo-service", self.pid_file
        start = f"setsid {script} {self.dir} >/dev/null 2>&1 </dev/null & echo $! > {pid}"
        entries = [
            f'start: "{start}"',
            f'stop: "kill $(cat {pid}) && rm -f {pid}"',
            f'status: "test -f {pid} && kill -0 $(cat {pid})"',
        ]
        if reload:
            entries.append(f'reload: "kill -HUP $(cat {pid})"')
        return "{" + ", ".join(entries) + "}"

    def kill(self) -> None:
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)


@pytest.fixture
def echo(tmp_path: Path) -> Iterator[EchoService]:
    directory = tmp_path / "echo"
    directory.mkdir()
    script = directory / "echo-service"
    script.write_text(SERVICE_SCRIPT)
    script.chmod(0o755)
    service = EchoService(directory)
    yield service
    service.kill()


def command_inventory(tmp_path: Path, echo: EchoService, spec: str = "local://") -> Inventory:
    return load(
        tmp_path,
        f"""\
name: commands
hosts: {{app1: {{spec: "{spec}"}}}}
thresholds: {{timeout_s: 2}}
services:
  echo: {{runtime: command, host: app1, commands: {echo.commands()}}}
  quiet: {{runtime: command, commands: {echo.commands(reload=False)}}}
""",
    )


def drive_the_echo_service(runtime: Runtime, echo: EchoService) -> None:
    """start, status, reload, restart (stop, then start), stop: each seen on the process."""
    assert runtime.name == "command"
    assert not runtime.is_running("echo")
    runtime.start("echo")
    assert runtime.is_running("echo")
    first = echo.pid()
    assert first is not None
    assert runtime.replicas("echo") == 1
    runtime.reload("echo")
    eventually(lambda: echo.reloads() == 1, "the service noted the reload")
    assert echo.pid() == first  # a reload, not a restart
    runtime.restart("echo")
    assert runtime.is_running("echo")
    assert echo.pid() not in (None, first)
    runtime.stop("echo")
    assert not runtime.is_running("echo")
    assert echo.pid() is None
    runtime.restart("echo")  # a stopped service: its stop fails, its start still runs
    assert runtime.is_running("echo")


def test_command_runtime_drives_a_real_process_on_this_machine(
    tmp_path: Path, echo: EchoService
) -> None:
    inventory = command_inventory(tmp_path, echo)
    runtime = runtime_of(inventory, "echo")
    assert runtime is not None
    drive_the_echo_service(runtime, echo)
    # quiet has echo's commands (and no host: this machine), so it runs too.
    assert runtime.status_lines() == ["echo: on app1: running", "quiet: on local: running"]
    # The plan shows the inventory's own commands; restart without one is stop, then start.
    commands = inventory.services["echo"].commands
    assert commands is not None
    assert runtime.command("start", "echo") == commands.start
    assert runtime.command("restart", "echo") == f"{commands.stop}; {commands.start}"


def test_command_runtime_over_ssh_drives_the_process_there(
    tmp_path: Path, echo: EchoService, sshd: Sshd
) -> None:
    inventory = command_inventory(tmp_path, echo, sshd.spec)
    runtime = runtime_named(inventory, "command")
    drive_the_echo_service(runtime, echo)
    commands = inventory.services["echo"].commands
    assert commands is not None
    where = f"on app1 (ssh://{sshd.user}@127.0.0.1:{sshd.port})"
    assert runtime.command("stop", "echo") == f"{where}: {commands.stop}"


def test_command_runtime_on_an_unreachable_host_is_one_line(
    tmp_path: Path, echo: EchoService, sshd: Sshd
) -> None:
    inventory = command_inventory(tmp_path, echo, sshd.spec.replace(str(sshd.port), "1", 1))
    runtime = runtime_named(inventory, "command")
    with pytest.raises(TargetUnreachable) as raised:
        runtime.restart("echo")
    assert raised.value.line() == f"unreachable: host app1 (ssh://{sshd.user}@127.0.0.1:1): " + (
        "Connection refused"
    )
    assert runtime.status_lines()[0].startswith("echo: on app1: unknown: unreachable: host app1")


def test_command_runtime_refuses_what_the_inventory_gives_no_command_for(
    tmp_path: Path, echo: EchoService
) -> None:
    runtime = runtime_named(command_inventory(tmp_path, echo), "command")
    assert "the inventory gives no command to recreate it" in refused_line(
        runtime, "recreate", "echo"
    )
    assert "none to scale it" in refused_line(runtime, "scale", "echo", "2")
    assert refused_line(runtime, "maintenance", "echo") == (
        "command runtime: cannot maintenance echo: the inventory gives no maintenance_on and "
        "maintenance_off commands"
    )
    assert refused_line(runtime, "reload", "quiet") == (
        "command runtime: cannot reload quiet: the inventory gives no reload command"
    )
    assert runtime.refusal("start", "nosuch") == (
        "the inventory declares no command service 'nosuch'"
    )


def test_a_status_command_that_cannot_run_is_a_failure_not_a_stopped_service(
    tmp_path: Path, echo: EchoService
) -> None:
    inventory = load(
        tmp_path,
        "name: commands\nservices:\n  echo: {runtime: command, commands: "
        "{start: 'true', stop: 'true', status: no-such-status-tool}}\n",
    )
    runtime = runtime_named(inventory, "command")
    with pytest.raises(RuntimeCommandFailed) as raised:
        runtime.is_running("echo")
    assert str(raised.value).startswith(
        "command runtime: status echo on host local: `no-such-status-tool` failed (exit status 127"
    )


def test_a_failing_command_is_one_line_naming_runtime_command_and_host(
    tmp_path: Path, echo: EchoService
) -> None:
    runtime = runtime_named(command_inventory(tmp_path, echo), "command")
    with pytest.raises(RuntimeCommandFailed) as raised:
        runtime.stop("echo")  # nothing runs: its pid file is missing
    line = str(raised.value)
    assert line.startswith("command runtime: stop echo on host app1: `kill $(cat ")
    # The command's own last words (here: kill's usage, as `cat` found no pid file).
    assert re.search(r"` failed \(exit status [1-9]\d*: .+\)$", line), line
    assert "\n" not in line


# -- the systemd runtime ---------------------------------------------------------------------


@dataclass
class SystemdHost:
    """A container booted with systemd, reached over ssh as `ops`."""

    container: str
    spec: str
    port: int
    backend_port: int  # chat-backend.service's http.server, published on loopback
    frontend_port: int  # nginx.service in front of it (port 80), published on loopback

    def systemctl(self, *words: str) -> str:
        done = subprocess.run(
            ["podman", "exec", self.container, "systemctl", *words],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        return done.stdout.strip()

    def read(self, path: str) -> str:
        done = subprocess.run(
            ["podman", "exec", self.container, "cat", path],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        return done.stdout

    def exists(self, path: str) -> bool:
        done = subprocess.run(
            ["podman", "exec", self.container, "test", "-e", path],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        return done.returncode == 0


def _podman(*words: str, timeout_s: float = 60, stdin: str | None = None) -> str:
    done = subprocess.run(
        ["podman", *words], input=stdin, capture_output=True, text=True,
        timeout=timeout_s, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"podman {' '.join(words)}: {done.stderr.strip()}", pytrace=False)
    return done.stdout.strip()


@pytest.fixture(scope="module")
def systemd_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SystemdHost]:
    if shutil.which("podman") is None:
        pytest.skip("the podman CLI is missing: run scripts/setup-container-engine")
    # The layers are cached: a rebuild with nothing changed takes a second.
    _podman(
        "build", "--network", "host", "-t", SYSTEMD_IMAGE, str(REPO / "tests/data/systemd-host"),
        timeout_s=900,
    )  # fmt: skip
    container = f"opsbook-systemd-{uuid.uuid4().hex[:8]}"
    _podman("run", "-d", "--systemd=always", "--name", container, "-p", "127.0.0.1::22",
            "-p", "127.0.0.1::8000", "-p", "127.0.0.1::80", SYSTEMD_IMAGE,
            "/sbin/init")  # fmt: skip
    try:
        end = time.monotonic() + BOOT_DEADLINE_S
        while True:
            state = subprocess.run(
                ["podman", "exec", container, "systemctl", "is-system-running"],
                capture_output=True, text=True, timeout=60, check=False,
            ).stdout.strip()  # fmt: skip
            if state in ("running", "degraded"):
                break
            assert time.monotonic() < end, f"systemd did not boot: {state}"
            time.sleep(0.2)
        directory = tmp_path_factory.mktemp("systemd-host")
        public = keypair(directory / "client_key").read_text()
        keys = "/home/ops/.ssh/authorized_keys"
        _podman("exec", "-i", container, "sh", "-c", f"cat > {keys} && chown ops:ops {keys}",
                stdin=public)  # fmt: skip
        host_key = _podman("exec", container, "cat", "/etc/ssh/ssh_host_ed25519_key.pub")
        port = int(_podman("port", container, "22").rsplit(":", 1)[1])
        backend_port = int(_podman("port", container, "8000").rsplit(":", 1)[1])
        frontend_port = int(_podman("port", container, "80").rsplit(":", 1)[1])
        known_hosts = directory / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{port} {host_key}\n")
        config = client_config(directory, directory / "client_key", known_hosts)
        end = time.monotonic() + BOOT_DEADLINE_S
        while not banner(port):
            assert time.monotonic() < end, "the container's sshd did not answer"
            time.sleep(0.2)
        spec = f"ssh://ops@127.0.0.1:{port}?ssh_config={config}"
        yield SystemdHost(container, spec, port, backend_port, frontend_port)
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "0", container], capture_output=True,
                       timeout=120, check=False)  # fmt: skip


@pytest.fixture
def systemd(tmp_path: Path, systemd_host: SystemdHost) -> Runtime:
    inventory = load(
        tmp_path,
        f"""\
name: systemd-host
hosts: {{box: {{spec: "{systemd_host.spec}"}}}}
services:
  echo: {{runtime: systemd, unit: chat-echo.service, host: box, sudo: true}}
  worker: {{runtime: systemd, unit: "chat-worker@.service", host: box, sudo: true}}
  unprivileged: {{runtime: systemd, unit: chat-echo.service, host: box}}
""",
    )
    runtime = runtime_of(inventory, "echo")
    assert runtime is not None
    assert runtime.name == "systemd"
    return runtime


def run_checks(inventory: Path, state: Path, reports: Path, *args: str) -> CheckRun:
    """`pytest -m daily` on an inventory, with the deployment's state in `state` (the tests'
    own OPSBOOK_ settings left out, but the CPU pressure limit the whole suite runs with)."""
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-m", "daily",
        f"--inventory={inventory}", f"--reports-dir={reports}", *args,
    ]  # fmt: skip
    kept = {"OPSBOOK__THRESHOLDS__CPU_PRESSURE_PERCENT"}
    environment = {
        k: v
        for k, v in os.environ.items()
        if k in kept or not k.startswith(("OPSBOOK_", "PYTEST_"))
    }
    done = subprocess.run(
        command, cwd=REPO, env={**environment, "OPSBOOK__STATE_DIR": str(state)},
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    return CheckRun(done, reports)


@pytest.mark.containers
def test_systemd_runtime_drives_a_unit_over_ssh_through_sudo(
    systemd: Runtime, systemd_host: SystemdHost
) -> None:
    assert not systemd.is_running("echo")
    systemd.start("echo")
    assert systemd_host.systemctl("is-active", "chat-echo.service") == "active"
    assert systemd.is_running("echo")
    first = systemd_host.systemctl("show", "--value", "-p", "MainPID", "chat-echo.service")
    systemd.reload("echo")
    eventually(lambda: "reloaded" in systemd_host.read("/run/chat-echo/echo.reloads"))
    assert systemd_host.systemctl("show", "--value", "-p", "MainPID", "chat-echo.service") == first
    systemd.restart("echo")
    again = systemd_host.systemctl("show", "--value", "-p", "MainPID", "chat-echo.service")
    assert again not in ("0", first)
    assert systemd.status_lines()[0] == "echo: chat-echo.service on box: active"
    systemd.stop("echo")
    assert systemd_host.systemctl("is-active", "chat-echo.service") == "inactive"
    assert not systemd.is_running("echo")
    where = f"on box (ssh://ops@127.0.0.1:{systemd_host.port})"
    assert systemd.command("restart", "echo") == (
        f"{where}: sudo -n systemctl restart chat-echo.service"
    )


@pytest.mark.containers
def test_systemd_runtime_without_sudo_fails_in_one_line(systemd: Runtime) -> None:
    with pytest.raises(RuntimeCommandFailed) as raised:
        systemd.start("unprivileged")
    line = str(raised.value)
    assert line.startswith(
        "systemd runtime: start unprivileged on host box: `systemctl start chat-echo.service` "
        "failed (exit status "
    )
    assert "\n" not in line


@pytest.mark.containers
def test_systemd_runtime_scales_the_instances_of_a_templated_unit(
    systemd: Runtime, systemd_host: SystemdHost
) -> None:
    def running() -> list[str]:
        listing = systemd_host.systemctl(
            "list-units", "--state=active", "--plain", "--no-legend", "chat-worker@*.service"
        )
        return sorted(line.split()[0] for line in listing.splitlines() if line.strip())

    assert systemd.replicas("worker") == 0
    systemd.restart("worker")  # none runs: a restart starts the first instance
    assert running() == ["chat-worker@1.service"]
    systemd.scale("worker", 3)
    assert systemd.replicas("worker") == 3
    assert running() == [f"chat-worker@{n}.service" for n in (1, 2, 3)]
    systemd.reload("worker")
    for n in (1, 2, 3):
        reloads = f"/run/chat-echo/worker-{n}.reloads"
        eventually(lambda path=reloads: "reloaded" in systemd_host.read(path))
    systemd.scale("worker", 1)
    assert running() == ["chat-worker@1.service"]
    systemd.stop("worker")
    assert running() == []
    assert systemd.command("scale", "worker", "2").endswith(
        "sudo -n systemctl start chat-worker@1.service chat-worker@2.service, then stop the "
        "other running instances of chat-worker@*.service"
    )


@pytest.mark.containers
def test_systemd_runtime_refuses_recreate_and_scale_of_a_plain_unit(systemd: Runtime) -> None:
    assert refused_line(systemd, "recreate", "echo") == (
        "systemd runtime: cannot recreate echo: a unit has no image to recreate it from; restart it"
    )
    assert refused_line(systemd, "scale", "echo", "2") == (
        "systemd runtime: cannot scale echo: scale needs a templated unit (NAME@.service) in "
        "the inventory, not chat-echo.service"
    )
    assert refused_line(systemd, "maintenance", "echo") == (
        "systemd runtime: cannot maintenance echo: the inventory names no "
        "services.echo.maintenance_flag (the file its nginx configuration tests; see "
        "docs/inventory.md)"
    )


@pytest.mark.containers
@pytest.mark.fixes("HEALTH-001")
def test_health_fix_restarts_a_stopped_systemd_unit_over_ssh(
    systemd_host: SystemdHost, tmp_path: Path
) -> None:
    """The issue's proof, end to end: the backend (a real HTTP service, chat-backend.service)
    answers, its unit stopped -> HEALTH-001 fails -> `--remediate=apply --allow=restart`
    restarts it with `sudo -n systemctl restart` over ssh -> FIXED, audited."""
    unit = "chat-backend.service"
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(
        f"""\
name: systemd-host
hosts: {{box: {{spec: "{systemd_host.spec}"}}}}
thresholds: {{timeout_s: 2}}
http:
  backend: {{kind: backend, url: "http://127.0.0.1:{systemd_host.backend_port}"}}
services:
  backend: {{runtime: systemd, unit: {unit}, host: box, sudo: true, targets: [backend]}}
"""
    )
    state = tmp_path / "state"

    def run(name: str, *args: str) -> CheckRun:
        return run_checks(inventory, state, tmp_path / name, "--check=HEALTH-001", *args)

    systemd_host.systemctl("start", unit)
    try:
        eventually(
            lambda: http_status(systemd_host.backend_port, "/health") == 200,
            "the backend answers",
        )
        healthy = run("healthy")
        assert healthy.outcome("HEALTH-001", "backend") == "passed", healthy.output
        assert systemd_host.systemctl("stop", unit) == ""
        assert systemd_host.systemctl("is-active", unit) == "inactive"
        fixed = run("fixed", "--remediate=apply", "--allow=restart")
        assert fixed.exit_code == 0, fixed.output
        row = fixed.row("HEALTH-001", "backend")
        assert row["outcome"] == "fixed", fixed.output
        assert row["message"].startswith("backend: GET /health: "), row["message"]
        attempt = row["remediation_attempt"]
        assert (attempt["status"], attempt["verdict"], attempt["after"]) == (
            "applied", "FIXED", "passed"
        ), attempt  # fmt: skip
        where = f"on box (ssh://ops@127.0.0.1:{systemd_host.port})"
        assert attempt["plan"] == [
            f"[restart] restart backend: {where}: sudo -n systemctl restart {unit} -> healthy"
        ], attempt["plan"]
        assert systemd_host.systemctl("is-active", unit) == "active"
        assert http_status(systemd_host.backend_port, "/health") == 200
        # Written ahead, in the deployment's state: the intent before the restart, the outcome.
        log = state / "audit.log"
        intent, outcome = (json.loads(line) for line in log.read_text().splitlines())
        assert (intent["event"], outcome["event"], outcome["intent"]) == ("intent", "outcome", 1)
        assert (intent["check"], intent["target"]) == ("HEALTH-001", "http/backend")
        assert (outcome["check"], outcome["target"], outcome["verdict"]) == (
            "HEALTH-001", "http/backend", "FIXED"
        )  # fmt: skip
    finally:
        systemd_host.systemctl("stop", unit)


@pytest.mark.containers
def test_the_daily_checks_of_a_host_over_ssh_pass(
    systemd_host: SystemdHost, tmp_path: Path
) -> None:
    """The issue's proof: a host reached over ssh, its daily checks (disk, CPU pressure, its
    services' units, the backend it serves) evaluated there and passing; then its backend unit
    stopped, and only the checks that watch it fail."""
    unit = "chat-backend.service"
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(
        f"""\
name: ssh-host
hosts: {{box: {{spec: "{systemd_host.spec}"}}}}
thresholds: {{timeout_s: 3}}
http:
  backend: {{kind: backend, url: "http://127.0.0.1:{systemd_host.backend_port}"}}
services:
  backend: {{runtime: systemd, unit: {unit}, host: box, sudo: true, targets: [backend]}}
  echo: {{runtime: systemd, unit: chat-echo.service, host: box, sudo: true}}
"""
    )
    systemd_host.systemctl("start", unit, "chat-echo.service")
    try:
        eventually(
            lambda: http_status(systemd_host.backend_port, "/health") == 200,
            "the backend answers",
        )
        healthy = run_checks(inventory, tmp_path / "state", tmp_path / "healthy")
        assert healthy.exit_code == 0, healthy.output
        outcomes = healthy.outcomes()
        # Evaluated on the host itself, over ssh: its filesystems, its CPU, its units.
        on_box = {check for (check, target), outcome in outcomes.items()
                  if target == "box" and outcome == "passed"}  # fmt: skip
        assert {"RES-001", "RES-003"} <= on_box, outcomes
        assert outcomes["HEALTH-005", "echo"] == "passed", outcomes
        assert outcomes["HEALTH-001", "backend"] == "passed", outcomes
        systemd_host.systemctl("stop", "chat-echo.service")
        broken = run_checks(inventory, tmp_path / "state", tmp_path / "broken")
        assert broken.exit_code == 1, broken.output
        failed = {key for key, outcome in broken.outcomes().items() if outcome == "failed"}
        assert failed == {("HEALTH-005", "echo")}, broken.output
        assert "chat-echo.service" in broken.row("HEALTH-005", "echo")["message"]
    finally:
        systemd_host.systemctl("stop", unit, "chat-echo.service")


@pytest.mark.containers
@pytest.mark.fixes("HEALTH-001")
def test_health_fix_restarts_a_stopped_service_through_its_commands(
    systemd_host: SystemdHost, tmp_path: Path
) -> None:
    """The `command` runtime end to end: a backend the inventory starts, stops and asks about
    with commands of its own (here systemctl through sudo, as a wrapper script would), on a
    host over ssh; stopped -> HEALTH-001 fails -> `--remediate=apply --allow=restart` runs
    the inventory's restart command there -> FIXED."""
    unit = "chat-backend.service"
    commands = {verb: f"sudo -n systemctl {verb} {unit}" for verb in ("start", "stop", "restart")}
    commands["status"] = f"systemctl is-active --quiet {unit}"
    listed = ", ".join(f'{verb}: "{command}"' for verb, command in commands.items())
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(
        f"""\
name: command-host
hosts: {{box: {{spec: "{systemd_host.spec}"}}}}
thresholds: {{timeout_s: 2}}
http:
  backend: {{kind: backend, url: "http://127.0.0.1:{systemd_host.backend_port}"}}
services:
  backend: {{runtime: command, host: box, targets: [backend], commands: {{{listed}}}}}
"""
    )
    systemd_host.systemctl("stop", unit)
    try:
        fixed = run_checks(
            inventory, tmp_path / "state", tmp_path / "fixed", "--check=HEALTH-001",
            "--remediate=apply", "--allow=restart",
        )  # fmt: skip
        assert fixed.exit_code == 0, fixed.output
        attempt = fixed.row("HEALTH-001", "backend")["remediation_attempt"]
        assert (attempt["verdict"], attempt["after"]) == ("FIXED", "passed"), attempt
        assert commands["restart"] in " ".join(attempt["plan"]), attempt["plan"]
        assert systemd_host.systemctl("is-active", unit) == "active"
    finally:
        systemd_host.systemctl("stop", unit)


@pytest.mark.containers
def test_containment_on_a_systemd_unit_closes_and_opens_the_public_port(
    systemd_host: SystemdHost,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`opsbook incident contain|release` where the public entry is a unit on a host: here
    chat-backend.service (python3's http.server, published on loopback; any unit will do)
    declared as the frontend: `sudo -n systemctl stop` over ssh, the published
    port refused from here, then `systemctl start` and /health 200; both audited."""
    unit = "chat-backend.service"
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(
        f"""\
name: systemd-host
hosts: {{box: {{spec: "{systemd_host.spec}"}}}}
thresholds: {{timeout_s: 2}}
http:
  entry: {{kind: frontend, url: "http://127.0.0.1:{systemd_host.backend_port}"}}
services:
  entry: {{runtime: systemd, unit: {unit}, host: box, sudo: true, targets: [entry], role: proxy}}
"""
    )
    state = tmp_path / "state"
    monkeypatch.setenv("OPSBOOK__STATE_DIR", str(state))
    where = ["--inventory", str(inventory), "--reports-dir", str(tmp_path / "reports")]
    systemd_host.systemctl("start", unit)
    try:
        eventually(
            lambda: http_status(systemd_host.backend_port, "/health") == 200, "the entry answers"
        )
        assert opsbook_incident("contain", "--allow=contain", *where) == 0
        printed = capsys.readouterr().out.splitlines()
        ssh = f"on box (ssh://ops@127.0.0.1:{systemd_host.port})"
        assert printed[-1].startswith(
            f"  [contain] stop entry, the public entry (every user is cut off): {ssh}: "
            f"sudo -n systemctl stop {unit} -> 127.0.0.1:{systemd_host.backend_port}: "
        ), printed
        assert systemd_host.systemctl("is-active", unit) == "inactive"
        assert connection_refused(systemd_host.backend_port)

        assert opsbook_incident("release", "--allow=contain", *where) == 0
        assert capsys.readouterr().out.splitlines()[-1] == (
            f"  [contain] start entry, the public entry, again: {ssh}: "
            f"sudo -n systemctl start {unit} -> entry /health answers 200"
        )
        assert systemd_host.systemctl("is-active", unit) == "active"
        assert http_status(systemd_host.backend_port, "/health") == 200
        events = [json.loads(line) for line in (state / "audit.log").read_text().splitlines()]
        assert [(e["event"], e["remediation"].rsplit(".", 1)[1]) for e in events] == [
            ("intent", "contain_entry"),
            ("outcome", "contain_entry"),
            ("intent", "release_entry"),
            ("outcome", "release_entry"),
        ]
    finally:
        systemd_host.systemctl("stop", unit)


# -- maintenance mode on a host: nginx.service in front of chat-backend.service ----------------

# The flag the image's nginx tests (tests/data/systemd-host/opsbook-maintenance.conf, the
# snippet docs/inventory.md ships), and the command that has nginx read its configuration again.
NGINX_FLAG = "/var/lib/nginx/maintenance.on"
NGINX_RELOAD = "sudo -n systemctl reload nginx.service"


def nginx_host_inventory(tmp_path: Path, host: SystemdHost, nginx: str) -> Path:
    """A deployment whose public entry is the host's nginx (declared with `nginx`, its runtime
    and settings) in front of the backend unit."""
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(
        f"""\
name: nginx-host
hosts: {{box: {{spec: "{host.spec}"}}}}
thresholds: {{timeout_s: 3}}
http:
  frontend: {{kind: frontend, url: "http://127.0.0.1:{host.frontend_port}"}}
  backend: {{kind: backend, url: "http://127.0.0.1:{host.backend_port}"}}
services:
  nginx: {{{nginx}, host: box, targets: [frontend], depends_on: [backend], role: proxy}}
  backend: {{runtime: systemd, unit: chat-backend.service, host: box, sudo: true,
            targets: [backend], role: api}}
"""
    )
    return inventory


def maintenance_on_and_off_from_outside(
    host: SystemdHost,
    inventory: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    switched: tuple[str, str],
) -> None:
    """`opsbook maintenance on`, whose plan says `switched[0]`: from here, every path of the
    entry answers 503 with the maintenance page, the frontend's HEALTH-001 is not applicable
    (the report says maintenance mode is on) while the backend's passes; `maintenance off`
    (`switched[1]`): / answers 200 through nginx and HEALTH-001 passes again; both audited."""
    state = tmp_path / "state"
    monkeypatch.setenv("OPSBOOK__STATE_DIR", str(state))
    where = ["--inventory", str(inventory), "--reports-dir", str(tmp_path / "reports")]
    port = host.frontend_port
    served = load_inventory(inventory, environ={})
    ssh = f"on box (ssh://ops@127.0.0.1:{host.port})"
    host.systemctl("start", "chat-backend.service")
    try:
        eventually(lambda: http_status(port, "/") == 200, "nginx passes / to the backend")
        assert not _served(served)

        assert opsbook_maintenance("on", *where) == 0
        assert capsys.readouterr().out.splitlines()[-1] == (
            f"  [maintenance-mode] turn maintenance mode on (503 everywhere): {ssh}: "
            f"{switched[0]} -> frontend /health answers 503"
        )
        assert host.exists(NGINX_FLAG)
        assert {http_status(port, path) for path in ("/", "/health", "/api/health")} == {503}
        assert _served(served)  # the page itself, read from the entry
        on = run_checks(inventory, state, tmp_path / "on", "--check=HEALTH-001")
        assert on.outcome("HEALTH-001", "frontend") == "skipped", on.output
        assert on.row("HEALTH-001", "frontend")["message"] == (
            "maintenance mode is on: frontend serves its maintenance page"
        )
        assert on.outcome("HEALTH-001", "backend") == "passed", on.output

        assert opsbook_maintenance("off", *where) == 0
        assert capsys.readouterr().out.splitlines()[-1] == (
            f"  [maintenance-mode] turn maintenance mode off (serve the site): {ssh}: "
            f"{switched[1]} -> frontend /health answers 200"
        )
        assert not host.exists(NGINX_FLAG)
        assert http_status(port, "/") == 200
        off = run_checks(inventory, state, tmp_path / "off", "--check=HEALTH-001")
        assert off.outcome("HEALTH-001", "frontend") == "passed", off.output
        events = [json.loads(line) for line in (state / "audit.log").read_text().splitlines()]
        assert [(e["event"], e["remediation"].rsplit(".", 1)[1]) for e in events] == [
            ("intent", "maintenance_on"),
            ("outcome", "maintenance_on"),
            ("intent", "maintenance_off"),
            ("outcome", "maintenance_off"),
        ]
    finally:
        subprocess.run(
            ["podman", "exec", host.container, "sh", "-c",
             f"rm -f {NGINX_FLAG} && systemctl reload nginx.service"],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        host.systemctl("stop", "chat-backend.service")


@pytest.mark.containers
def test_maintenance_on_a_systemd_nginx_is_served_and_seen_from_outside(
    systemd_host: SystemdHost,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The issue's proof on systemd: nginx.service's maintenance_flag created with `sudo -n
    touch` over ssh and the unit reloaded: 503 with the page from outside, the frontend's
    checks not applicable; then removed and reloaded: 200."""
    nginx = f"runtime: systemd, unit: nginx.service, sudo: true, maintenance_flag: {NGINX_FLAG}"
    inventory = nginx_host_inventory(tmp_path, systemd_host, nginx)
    maintenance_on_and_off_from_outside(
        systemd_host, inventory, tmp_path, capsys, monkeypatch,
        (f"sudo -n touch {NGINX_FLAG} && {NGINX_RELOAD}",
         f"sudo -n rm -f {NGINX_FLAG} && {NGINX_RELOAD}"),
    )  # fmt: skip


@pytest.mark.containers
def test_maintenance_through_the_command_runtimes_own_commands(
    systemd_host: SystemdHost,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The `command` runtime: the inventory's maintenance_on and maintenance_off commands,
    run over ssh, switch the same nginx: 503 with the page from outside, then 200."""
    switched = (
        f"sudo -n touch {NGINX_FLAG} && {NGINX_RELOAD}",
        f"sudo -n rm -f {NGINX_FLAG} && {NGINX_RELOAD}",
    )
    commands = {
        "start": "sudo -n systemctl start nginx.service",
        "stop": "sudo -n systemctl stop nginx.service",
        "status": "systemctl is-active --quiet nginx.service",
        "maintenance_on": switched[0],
        "maintenance_off": switched[1],
    }
    listed = ", ".join(f'{verb}: "{command}"' for verb, command in commands.items())
    inventory = nginx_host_inventory(
        tmp_path, systemd_host, f"runtime: command, commands: {{{listed}}}"
    )
    maintenance_on_and_off_from_outside(
        systemd_host, inventory, tmp_path, capsys, monkeypatch, switched
    )


def test_maintenance_on_a_host_without_its_setting_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without maintenance_flag (systemd) or maintenance_on/off (command), `opsbook
    maintenance on` is refused before anything is asked of the host (which need not even
    answer): one line, exit 2."""
    host = SystemdHost("none", "ssh://ops@127.0.0.1:9", 9, 9, 9)  # nothing is reached
    declarations = {
        "systemd": (
            "runtime: systemd, unit: nginx.service, sudo: true",
            "the inventory names no services.nginx.maintenance_flag (the file its nginx "
            "configuration tests; see docs/inventory.md)",
        ),
        "command": (
            'runtime: command, commands: {start: "true", stop: "true", status: "true"}',
            "the inventory gives no maintenance_on and maintenance_off commands",
        ),
    }
    for name, (nginx, why) in declarations.items():
        folder = tmp_path / name
        folder.mkdir()
        inventory = nginx_host_inventory(folder, host, nginx)
        where = ["--inventory", str(inventory), "--reports-dir", str(folder / "reports")]
        assert opsbook_maintenance("on", *where) == 2
        captured = capsys.readouterr()
        assert captured.err == (
            f"maintenance: {name} runtime: cannot switch nginx's maintenance page: {why}; "
            "switch nginx to its maintenance page by hand, as the maintenance-window runbook "
            "says\n"
        )
        assert captured.out == ""
        runtime = runtime_of(load_inventory(inventory, environ={}), "nginx")
        assert runtime is not None
        assert refused_line(runtime, "maintenance", "nginx") == (
            f"{name} runtime: cannot maintenance nginx: {why}"
        )


# -- compose and sandbox: what they refuse ---------------------------------------------------


def test_compose_runtime_refuses_to_reload_a_service_that_sighup_would_kill(
    tmp_path: Path,
) -> None:
    inventory = load(tmp_path, "name: chat\ncompose: {project: chat}\n")
    runtime = runtime_named(inventory, "compose")
    assert isinstance(runtime, ComposeRuntime)
    assert refused_line(runtime, "reload", "backend") == (
        "compose runtime: cannot reload backend: its process does not reload its configuration "
        "on SIGHUP; restart it"
    )
    assert runtime.command("reload", "prometheus").endswith("kill --signal HUP prometheus")
    for verb in ("start", "stop", "restart"):
        assert runtime.command(verb, "backend").endswith(f" {verb} backend")
    assert runtime.command("status", "backend").endswith(" ps --all backend")


def test_sandbox_runtime_refuses_to_reload_a_service_that_sighup_would_kill(
    tmp_path: Path,
) -> None:
    inventory = load(tmp_path, f"name: chat\nsandbox: {{dir: {tmp_path / 'sandbox'}}}\n")
    runtime = runtime_named(inventory, "sandbox")
    assert refused_line(runtime, "reload", "redis") == (
        "sandbox runtime: cannot reload redis: its process does not reload its configuration "
        "on SIGHUP; restart it"
    )
    assert refused_line(runtime, "scale", "backend", "2") == (
        "sandbox runtime: cannot scale backend: it runs as one process (only worker can be scaled)"
    )


# -- the sandbox: every verb on its real processes ------------------------------------------


def _children(pid: int) -> set[str]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return set(found.stdout.split())


def test_sandbox_runtime_does_each_verb_on_its_processes(breakable_sandbox: Stack) -> None:
    inventory = load_inventory(breakable_sandbox.inventory_path, environ={})
    runtime = runtime_of(inventory, "backend")
    assert runtime is not None
    assert runtime.name == "sandbox"
    port = breakable_sandbox.state.ports["backend"]
    runtime.stop("backend")
    assert not runtime.is_running("backend")
    assert http_status(port, "/health") is None
    runtime.start("backend")
    assert runtime.is_running("backend")
    eventually(lambda: http_status(port, "/health") == 200, "the started backend answers")
    before = breakable_sandbox.component("backend").pid()
    runtime.restart("backend")
    assert breakable_sandbox.component("backend").pid() not in (None, before)
    before = breakable_sandbox.component("backend").pid()
    runtime.recreate("backend")
    assert breakable_sandbox.component("backend").pid() not in (None, before)
    # nginx reloads on SIGHUP: the same master starts new workers.
    master = breakable_sandbox.component("nginx").pid()
    assert master is not None
    workers = _children(master)
    runtime.reload("nginx")
    eventually(lambda: _children(master) - workers, "nginx started new workers")
    assert breakable_sandbox.component("nginx").pid() == master
    runtime.scale("worker", 2)
    assert runtime.replicas("worker") == 2
    runtime.scale("worker", 1)
    assert runtime.replicas("worker") == 1
    assert any(line.startswith("backend ") for line in runtime.status_lines())
    # Maintenance: the flag nginx tests on every request; read back from the entry itself.
    assert runtime.maintenance_command(True, "nginx") == (
        f"touch {breakable_sandbox.dir / 'nginx' / 'maintenance.on'}"
    )
    runtime.maintenance(True, "nginx")
    assert _statuses(inventory) == {503}
    assert _served(inventory)
    runtime.maintenance(False, "nginx")
    assert 503 not in _statuses(inventory)
    assert not _served(inventory)


# -- compose: start, stop, status and reload on a real compose project ------------------------


def _processes(stack: ComposeStack, service: str) -> set[str]:
    """The pids in a service's container (`docker top`)."""
    lines = docker(stack, "top", container(stack, service), "pid").splitlines()[1:]
    return {line.strip() for line in lines if line.strip()}


@pytest.mark.containers
def test_compose_runtime_starts_stops_and_reloads_services(
    compose_stack: ComposeStack, runtime: ComposeRuntime
) -> None:
    name = container(compose_stack, "worker")
    runtime.stop("worker")
    assert not runtime.is_running("worker")
    assert docker(compose_stack, "inspect", "-f", "{{.State.Running}}", name).strip() == "false"
    runtime.start("worker")
    assert runtime.is_running("worker")
    assert docker(compose_stack, "inspect", "-f", "{{.State.Running}}", name).strip() == "true"
    # nginx reloads on SIGHUP: the same container (not restarted) runs new workers.
    frontend = container(compose_stack, "frontend")
    started = docker(compose_stack, "inspect", "-f", "{{.State.StartedAt}}", frontend).strip()
    before = _processes(compose_stack, "frontend")
    runtime.reload("frontend")
    eventually(lambda: _processes(compose_stack, "frontend") - before, "nginx ran new workers")
    assert (
        docker(compose_stack, "inspect", "-f", "{{.State.StartedAt}}", frontend).strip() == started
    )
    assert any("worker" in line for line in runtime.status_lines())


def _served(inventory: Inventory) -> bool:
    (name, endpoint), *_ = sorted(inventory.endpoints("frontend").items())
    frontend = HttpTarget(name, endpoint, 3.0)
    try:
        return maintenance_served(frontend)
    finally:
        frontend.close()


def _statuses(inventory: Inventory) -> set[int]:
    (_, endpoint), *_ = sorted(inventory.endpoints("frontend").items())
    port = urlsplit(endpoint.url).port or 80
    return {http_status(port, path) or 0 for path in ("/", "/health", "/api/health")}


@pytest.mark.containers
def test_compose_maintenance_is_served_by_nginx_and_read_from_the_entry(
    compose_stack: ComposeStack, runtime: ComposeRuntime
) -> None:
    inventory = load_inventory(compose_stack.inventory_path, environ={})
    assert not _served(inventory)
    assert runtime.maintenance_command(True, "frontend").endswith(
        "exec -T frontend sh -c 'touch /var/lib/nginx/maintenance.on && nginx -s reload'"
    )
    runtime.maintenance(True, "frontend")
    try:
        assert _statuses(inventory) == {503}  # every path, /health included
        assert _served(inventory)
    finally:
        runtime.maintenance(False, "frontend")
    assert 503 not in _statuses(inventory)
    assert not _served(inventory)
    # Switched on by hand inside the container: the entry says so all the same.
    frontend = container(compose_stack, "frontend")
    docker(compose_stack, "exec", frontend, "touch", "/var/lib/nginx/maintenance.on")
    try:
        assert _served(inventory)
    finally:
        docker(compose_stack, "exec", frontend, "rm", "-f", "/var/lib/nginx/maintenance.on")
    assert not _served(inventory)
    assert "the maintenance page is the frontend's" in refused_line(
        runtime, "maintenance", "backend"
    )


@pytest.mark.containers
def test_containment_on_a_compose_stack_closes_and_opens_the_public_port(
    compose_stack: ComposeStack,
    run_compose: RunCompose,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`opsbook incident contain|release` on compose: `docker compose stop frontend`, its
    published port refused from here, the frontend's checks not applicable with who closed
    it; then `docker compose start frontend` and /health 200; both audited."""
    inventory = load_inventory(compose_stack.inventory_path, environ={})
    (_, endpoint), *_ = sorted(inventory.endpoints("frontend").items())
    port = urlsplit(endpoint.url).port or 80
    state = tmp_path / "state"
    monkeypatch.setenv("OPSBOOK__STATE_DIR", str(state))
    monkeypatch.setenv("OPSBOOK_COMPOSE_DIR", str(compose_stack.dir))
    where = ["--inventory", str(compose_stack.inventory_path), "--reports-dir", str(tmp_path)]
    frontend = container(compose_stack, "frontend")
    try:
        assert opsbook_incident("contain", "--allow=contain", *where) == 0
        printed = capsys.readouterr().out.splitlines()
        assert printed[-1].startswith("  [contain] stop frontend, the public entry"), printed
        assert f" stop frontend -> 127.0.0.1:{port}: " in printed[-1], printed
        assert docker(compose_stack, "inspect", "-f", "{{.State.Running}}", frontend).strip() == (
            "false"
        )
        assert connection_refused(port)
        run = run_compose("--check=HEALTH-001", "--check=COMPOSE-001")
        for check_id in ("HEALTH-001", "COMPOSE-001"):
            row = run.row(check_id, "frontend")
            assert row["outcome"] == "skipped", run.output
            assert row["message"].startswith("contained by opsbook at "), row
        assert run.outcome("HEALTH-001", "backend") == "passed", run.output

        assert opsbook_incident("release", "--allow=contain", *where) == 0
        assert (
            capsys.readouterr()
            .out.splitlines()[-1]
            .endswith(" start frontend -> frontend /health answers 200")
        )
        assert http_status(port, "/health") == 200
        events = [json.loads(line) for line in (state / "audit.log").read_text().splitlines()]
        assert [e["event"] for e in events] == ["intent", "outcome"] * 2
        assert {e.get("status") for e in events[1::2]} == {"applied"}
    finally:
        runtime_named(inventory, "compose").start("frontend")


@pytest.mark.containers
def test_a_host_whose_sshd_is_stopped_is_one_error_line_and_exit_10(
    systemd_host: SystemdHost, tmp_path: Path
) -> None:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(
        f"name: systemd-host\nhosts: {{box: {{spec: '{systemd_host.spec}'}}}}\n"
        "thresholds: {timeout_s: 2, memory_used_percent: 100}\n"
    )

    def run() -> CheckRun:
        command = [
            sys.executable, "-m", "pytest", "-q", "-p", "no:randomly",
            f"--inventory={inventory}", f"--reports-dir={tmp_path / 'reports'}",
            "--check=RES-002",
        ]  # fmt: skip
        done = subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False
        )
        return CheckRun(done, tmp_path / "reports")

    healthy = run()
    assert healthy.exit_code == 0, healthy.output
    assert systemd_host.systemctl("stop", "ssh.service") == ""
    try:
        started = time.monotonic()
        down = run()
        assert time.monotonic() - started < 60  # a bound against a hang, not a timing
    finally:
        systemd_host.systemctl("start", "ssh.service")
    assert down.exit_code == 10, down.output
    assert down.outcome("RES-002", "box") == "error"
    where = f"ssh://ops@127.0.0.1:{systemd_host.port}"
    lines = [line for line in down.output.splitlines() if line.startswith("unreachable: ")]
    assert lines, down.output
    assert all(line.startswith(f"unreachable: host box ({where}): ") for line in lines)
    assert "Traceback" not in down.output
