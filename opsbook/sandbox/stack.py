"""The whole AI chat system as native processes on loopback, all state under one directory.

    stack = Stack(Path("/tmp/sandbox"))
    inventory = stack.up()          # start what is not running; write inventory.yaml
    stack.stop("redis"); stack.start("redis"); stack.restart("worker")
    stack.scale("worker", 3)        # worker, worker-2 and worker-3 run; scale to 1 stops 2 and 3
    stack.status()                  # [ComponentStatus(name, running, pid, port), ...]
    stack.down()                    # stop everything; no process is left behind

Ports are chosen once and kept in DIR/state.json, so a second `up` (or a restart) reuses them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsbook.loopback import free_port
from opsbook.releases import releases_dir
from opsbook.sandbox.app import Backend, Worker, write_app_config
from opsbook.sandbox.audit_defaults import audit_section, ensure_env_file
from opsbook.sandbox.base import Component, Layout
from opsbook.sandbox.nginx import Nginx
from opsbook.sandbox.postgres import Postgres
from opsbook.sandbox.process import ComponentError, SandboxError
from opsbook.sandbox.prometheus import Prometheus
from opsbook.sandbox.pushgateway import Pushgateway
from opsbook.sandbox.redis import Redis
from opsbook.sandbox.targets_section import target_sections

# In start order; `down` stops them in reverse. The Pushgateway takes the runs' metrics
# (the inventory's metrics.pushgateway) for Prometheus to scrape.
COMPONENTS = ("postgres", "redis", "backend", "worker", "nginx", "pushgateway", "prometheus")
# nginx-tls: nginx's second, TLS listener (the inventory's public entry frontend-tls).
PORTED = ("postgres", "redis", "backend", "nginx", "nginx-tls", "pushgateway", "prometheus")
# Components that may run as several processes (`scale`): worker, worker-2, worker-3, ...
SCALABLE = ("worker",)
MAX_REPLICAS = 8
_REPLICA = re.compile(r"(?P<base>[a-z]+)-(?P<replica>[0-9]+)")


@dataclass(frozen=True)
class SandboxState:
    """What a sandbox keeps between runs: its ports, by component name."""

    ports: dict[str, int]

    @classmethod
    def load(cls, path: Path) -> SandboxState | None:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            kept = raw["ports"]
            ports = {name: int(kept[name]) for name in PORTED if name in kept}
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SandboxError(f"sandbox state {path} is unreadable: {exc}") from None
        return cls(ports)

    @classmethod
    def fresh(cls) -> SandboxState:
        return cls({}).completed()

    def completed(self) -> SandboxState:
        """With a port for every ported component: a sandbox made before a component was
        added keeps its ports and gets one for the newcomer."""
        ports = dict(self.ports)
        while len(ports) < len(PORTED):
            port = free_port()
            if port not in ports.values():
                ports[next(name for name in PORTED if name not in ports)] = port
        return SandboxState(ports)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"ports": self.ports}, indent=2) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    running: bool
    pid: int | None
    port: int | None

    def line(self) -> str:
        state = "running" if self.running else "stopped"
        return f"{self.name:<11} {state:<8} pid={self.pid or '-'} port={self.port or '-'}"


class Stack:
    """One sandbox, in `directory` (made absolute)."""

    def __init__(self, directory: Path, name: str = "sandbox") -> None:
        self.dir = Path(directory).absolute()
        # The deployment's name in its inventory: a fleet of sandboxes needs one each.
        self.name = name
        self.layout = Layout(self.dir)
        self._state: SandboxState | None = None

    @property
    def inventory_path(self) -> Path:
        return self.layout.inventory

    @property
    def state(self) -> SandboxState:
        """The ports, chosen (and saved) on first use."""
        if self._state is None:
            state = SandboxState.load(self.layout.state_file)
            if state is None:
                self.dir.mkdir(parents=True, exist_ok=True)
                state = SandboxState.fresh()
                state.save(self.layout.state_file)
            elif len(state.ports) < len(PORTED):
                state = state.completed()
                state.save(self.layout.state_file)
            self._state = state
        return self._state

    def component(self, name: str) -> Component:
        replica = _REPLICA.fullmatch(name)
        if replica and replica["base"] in SCALABLE and 2 <= int(replica["replica"]) <= MAX_REPLICAS:
            return Worker(self.layout, None, replica=int(replica["replica"]))
        if name not in COMPONENTS:
            raise SandboxError(f"unknown component {name!r} (one of {', '.join(COMPONENTS)})")
        ports = self.state.ports
        if name == "postgres":
            return Postgres(self.layout, ports["postgres"])
        if name == "redis":
            return Redis(self.layout, ports["redis"])
        if name == "backend":
            return Backend(self.layout, ports["backend"])
        if name == "worker":
            return Worker(self.layout, None)
        if name == "nginx":
            return Nginx(
                self.layout, ports["nginx"], backend_port=ports["backend"],
                tls_port=ports["nginx-tls"],
            )  # fmt: skip
        if name == "pushgateway":
            return Pushgateway(self.layout, ports["pushgateway"])
        return Prometheus(
            self.layout,
            ports["prometheus"],
            backend_port=ports["backend"],
            pushgateway_port=ports["pushgateway"],
        )

    def _prepare_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            # The postgres user and nginx's workers (nobody) must reach their own subdirs.
            self.dir.chmod(0o711)
        for sub in (self.layout.logs, self.layout.run):
            sub.mkdir(exist_ok=True)
        self.layout.secrets.mkdir(mode=0o700, exist_ok=True)
        ensure_env_file(self.dir)
        write_app_config(self.layout, self.state.ports)

    def up(self) -> Path:
        """Start every component that is not running; write and return the inventory path.

        A first backup is taken when there is none: a healthy deployment has one (BACKUP-001).
        """
        self._prepare_dir()
        for name in COMPONENTS:
            self.component(name).start()
        inventory_path = self.write_inventory()
        self._first_backup(inventory_path)
        return inventory_path

    def _first_backup(self, inventory_path: Path) -> None:
        from opsbook.backup import BackupError, latest_backup, take_backup
        from opsbook.inventory import load_inventory

        inventory = load_inventory(inventory_path, environ={})
        if inventory.backup is None or latest_backup(inventory.backup.dir) is not None:
            return
        try:
            take_backup(inventory)
        except BackupError as exc:
            raise SandboxError(f"first backup: {exc}") from None

    def start(self, name: str) -> None:
        self._prepare_dir()
        self.component(name).start()

    def stop(self, name: str) -> None:
        self.component(name).stop()

    def restart(self, name: str) -> None:
        self.stop(name)
        self.start(name)

    def recreate(self, name: str) -> None:
        """A native process has no image: recreate is a restart from a clean state (its
        configuration files are written afresh by start)."""
        self.stop(name)
        self._prepare_dir()
        self.component(name).start()

    def extra_replicas(self, name: str) -> list[str]:
        """The extra processes of a scalable component that have a pid file (worker-2, ...),
        running or left behind by a crash."""
        if name not in SCALABLE:
            return []
        found = []
        for replica in range(2, MAX_REPLICAS + 1):
            if self.layout.pid_file(f"{name}-{replica}").exists():
                found.append(f"{name}-{replica}")
        return found

    def replicas(self, name: str) -> int:
        """How many processes of the component run (the component itself and its extras)."""
        names = [name, *self.extra_replicas(name)]
        return sum(1 for each in names if self.component(each).is_running())

    def scale(self, name: str, count: int) -> None:
        """Run exactly `count` processes of a scalable component: NAME, NAME-2 ... NAME-count.

        Extra processes are started together and waited for; those above `count` are stopped
        (SIGTERM: a worker finishes the message in hand), and whatever one still held in
        flight is handed back to message_queue, since nothing would recover it later.
        """
        if name not in SCALABLE:
            raise SandboxError(f"{name} cannot be scaled (only {', '.join(SCALABLE)})")
        if not 1 <= count <= MAX_REPLICAS:
            raise SandboxError(f"cannot scale {name} to {count} (1 to {MAX_REPLICAS})")
        self._prepare_dir()
        wanted = [name, *(f"{name}-{replica}" for replica in range(2, count + 1))]
        starting = [self.component(each) for each in wanted]
        starting = [component for component in starting if not component.is_running()]
        for component in starting:
            component.prepare()
            try:
                component.process.spawn()
            except OSError as exc:
                problem = f"cannot run {component.process.argv[0]}: {exc.strerror}"
                raise ComponentError(component.name, problem, None) from None
        for component in starting:
            component.wait_ready()
        for extra in self.extra_replicas(name):
            if extra not in wanted:
                self._retire(extra)

    def _retire(self, name: str) -> None:
        worker = self.component(name)
        assert isinstance(worker, Worker)
        worker.stop()
        worker.requeue_in_flight()

    def down(self) -> None:
        """Stop every component, last started first; raise after trying them all."""
        if not self.layout.state_file.exists():
            return
        errors = []
        for name in reversed(COMPONENTS):
            # Extra workers first, while Redis still runs to take back what they held.
            for extra in reversed(self.extra_replicas(name)):
                try:
                    self._retire(extra)
                except SandboxError as exc:
                    errors.append(exc)
            try:
                self.stop(name)
            except SandboxError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def status(self) -> list[ComponentStatus]:
        """One line per component, and one per extra process of a scaled one."""
        result = []
        for name in COMPONENTS:
            for each in (name, *self.extra_replicas(name)):
                component = self.component(each)
                pid = component.pid()
                result.append(ComponentStatus(each, pid is not None, pid, component.port))
        return result

    def processes(self) -> list[int]:
        """Every process of the stack, its components' children included (nginx's workers,
        PostgreSQL's backends): what must be frozen to make the whole stack hang."""
        found: list[int] = []
        for status in self.status():
            if status.pid:
                found += process_tree(status.pid)
        return found

    def write_inventory(self) -> Path:
        import yaml  # only `up` needs it; keeps the CLI quick to start

        ports = self.state.ports
        inventory: dict[str, Any] = {
            "name": self.name,
            "sandbox": {"dir": str(self.dir)},
            # Each sandbox is a deployment of its own: its lock, budgets and audit log too.
            "state_dir": str(self.dir / "state"),
            **target_sections(
                self.layout,
                {**ports, "frontend": ports["nginx"]},
                {
                    "backend": "backend",
                    "frontend": "nginx",
                    "prometheus": "prometheus",
                    "postgres": "postgres",
                    "redis": "redis",
                },
                tls_entry=(ports["nginx-tls"], Nginx.certificate_of(self.layout)),
            ),
            # Every run against the sandbox reports to its Pushgateway, which its Prometheus
            # scrapes: OpsbookRunMissing fires only when no run reported for too long.
            "metrics": {"pushgateway": f"http://127.0.0.1:{ports['pushgateway']}"},
            "audit": {
                **audit_section(self.dir, self.state.ports),
                # More logs for the log audit (SEC-050) only: LOG-001 would take their
                # routine FATAL lines (a terminated session) for service errors.
                "logs": [
                    str(self.layout.log("postgres")),
                    str(self.layout.log("redis")),
                    str(self.dir / "nginx" / "logs" / "access.log"),
                ],
            },
            "hosts": {
                "local": {
                    "spec": "local://",
                    "filesystems": [str(self.dir)],
                    "logs": [
                        str(self.layout.log("backend")),
                        str(self.layout.log("worker")),
                        str(self.dir / "nginx" / "logs" / "error.log"),
                    ],
                }
            },
        }
        inventory.update(sandbox_inventory_sections(self.dir))
        text = "# Written by `python -m opsbook sandbox up`; rewritten on every up.\n"
        text += yaml.safe_dump(inventory, sort_keys=False, default_flow_style=False)
        self.inventory_path.write_text(text, encoding="utf-8")
        return self.inventory_path


def sandbox_inventory_sections(sandbox_dir: Path) -> dict[str, object]:
    """The `backup:` and `deploy:` sections of the sandbox's inventory.

    Backups go to DIR/backups: `backups/` on the data filesystem the inventory lists for the
    host (DIR), where remediation/disk.py's retention looks for opsbook's backups.
    """
    return {
        "backup": {
            "dir": str(sandbox_dir / "backups"),
            "data_paths": [str(sandbox_dir / "nginx" / "html")],
        },
        "deploy": {"releases_dir": str(releases_dir(sandbox_dir)), "min_free_mb": 100},
    }


def process_tree(pid: int) -> list[int]:
    """The process and its descendants, parents first (from /proc; a process gone meanwhile
    is left out)."""
    found, waiting = [], [pid]
    while waiting:
        each = waiting.pop(0)
        found.append(each)
        for task in Path(f"/proc/{each}/task").glob("*/children"):
            try:
                waiting += [int(child) for child in task.read_text().split()]
            except OSError:
                continue
    return found
