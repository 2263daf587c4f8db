"""The sandbox on a container engine: the whole AI chat system as a compose project (Docker,
or Podman's Docker API), driven through opsbook.compose; state (secrets, inventory) under one
directory.

    stack = ComposeStack(Path("/tmp/cz"))
    inventory = stack.up()          # build (cached), start, wait until ready, write inventory.yaml
    stack.status()                  # [ServiceStatus(name, running, container, port), ...]
    stack.down()                    # remove containers, network and volumes

The services and images are in compose.yaml at the repository root and containers/; every
`docker compose` command gets `OPSBOOK_COMPOSE_DIR=DIR` (where the secret files are).
Readiness is probed from the host: engines without systemd never run a HEALTHCHECK.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from opsbook import yamltext
from opsbook.compose import COMPOSE_FILE, ComposeDriver, ComposeError
from opsbook.inventory import OVERRIDE_NAME
from opsbook.loopback import http_json, http_status
from opsbook.sandbox.base import Layout
from opsbook.sandbox.postgres import ADMIN_ROLE, APP_ROLE, MONITOR_ROLE
from opsbook.sandbox.prometheus import LIMITS_FILE, compose_memory_limits, memory_limit_rules
from opsbook.sandbox.redis import USERS, secret_name
from opsbook.sandbox.targets_section import target_sections

# The repository's alert rules, which the stack's Prometheus loads.
ALERTS = COMPOSE_FILE.parent / "alerts"
# The jobs of containers/prometheus/prometheus.yml: the services with a memory series.
SCRAPED = ("backend", "prometheus")

# In start order (compose's depends_on decides the real order); the container port of each.
SERVICES = ("postgres", "redis", "backend", "worker", "frontend", "prometheus")
CONTAINER_PORTS = {
    "postgres": 5432,
    "redis": 6379,
    "backend": 8000,
    "frontend": 8080,
    "prometheus": 9090,
}
# The runbook's resource limits (its override file): what compose.yaml sets and the stack's
# inventory expects (services.NAME.limits, compared by COMPOSE-008). Kept here rather than read
# from compose.yaml, so that a compose file that drifts from the runbook fails the check.
RUNBOOK_LIMITS = {
    "backend": {"cpus": 2, "memory": "2G", "memory_reservation": "1G"},
    "frontend": {"cpus": 1, "memory": "1G", "memory_reservation": "512M"},
}
WORKER_READY_FILE = "/tmp/worker.ready"  # noqa: S108 (inside the worker's own tmpfs)
SECRETS = (APP_ROLE, MONITOR_ROLE, ADMIN_ROLE, *(secret_name(user) for user in USERS))

DEADLINE_S = 90.0  # the first start of PostgreSQL runs initdb
BUILD_TIMEOUT_S = 900.0
POLL_S = 0.5


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    running: bool
    container: str | None
    port: int | None  # the published port on 127.0.0.1

    def line(self) -> str:
        state = "running" if self.running else "stopped"
        return (
            f"{self.name:<11} {state:<8} container={self.container or '-'} port={self.port or '-'}"
        )


class ComposeStack(ComposeDriver):
    """The sandbox's compose project, its state in `directory` (made absolute)."""

    def __init__(
        self,
        directory: Path,
        *,
        project: str | None = None,
        compose_file: Path = COMPOSE_FILE,
        docker_host: str | None = None,
    ) -> None:
        directory = Path(directory).absolute()
        super().__init__(
            directory,
            project=project,
            compose_file=compose_file,
            docker_host=docker_host,
            # The stack's own, never the one beside the shared compose.yaml.
            override_file=directory / OVERRIDE_NAME,
        )
        self.layout = Layout(self.dir)

    @property
    def inventory_path(self) -> Path:
        return self.layout.inventory

    # -- docker compose --------------------------------------------------------------------

    def _containers(self) -> dict[str, dict[str, object]]:
        """`docker compose ps --all` as {service: entry}."""
        out = self.compose("ps", "--all", "--format", "json").strip()
        if not out:
            return {}
        # Compose prints one JSON object per line (older releases: one JSON array).
        if out.startswith("["):
            entries = json.loads(out)
        else:
            entries = [json.loads(line) for line in out.splitlines()]
        return {str(entry["Service"]): entry for entry in entries}

    def published_port(self, service: str) -> int:
        out = self.compose("port", service, str(CONTAINER_PORTS[service])).strip()
        host, _, port = out.rpartition(":")
        if host != "127.0.0.1" or not port.isdigit():
            raise ComposeError(f"{service}: not published on 127.0.0.1 (compose says {out!r})")
        return int(port)

    # -- the stack ---------------------------------------------------------------------------

    def _prepare_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.layout.secrets.mkdir(mode=0o700, exist_ok=True)
        self.layout.secrets.chmod(0o700)
        for name in SECRETS:
            self.layout.secret(name)
            # Bind-mounted as is into containers whose services run as non-root users, so the
            # file is readable inside (as Docker Swarm's secrets are, mode 0444); on the host
            # the 0700 directory keeps it private.
            self.layout.secret_file(name).chmod(0o444)
        # The repository's alert rules, as the native sandbox ships them (mounted read-only).
        rules = self.dir / "prometheus" / "rules"
        rules.mkdir(parents=True, exist_ok=True)
        for path in sorted(ALERTS.glob("*.yml")):
            shutil.copyfile(path, rules / path.name)
            (rules / path.name).chmod(0o644)
        # HighMemoryUsage compares with the limits this compose file makes the engine enforce
        # (the shipped file has the runbook's), for each job its Prometheus scrapes.
        # The stack's override file, where there is one (COMPOSE-008's fix writes the inventory's
        # limits there), comes after compose.yaml, as in every compose command.
        compose = yamltext.safe_load(self.compose_file.read_text(encoding="utf-8")) or {}
        limits = compose_memory_limits(compose, SCRAPED)
        source = self.compose_file.name
        if self.override_file is not None and self.override_file.exists():
            override = yamltext.safe_load(self.override_file.read_text(encoding="utf-8")) or {}
            limits.update(compose_memory_limits(override, SCRAPED))
            source += f" and {self.override_file}"
        (rules / LIMITS_FILE).write_text(memory_limit_rules(limits, source))
        (rules / LIMITS_FILE).chmod(0o644)

    def up(self, build: bool = True) -> Path:
        """Build the images (layers cached), start every service, wait until the stack is
        ready, and write and return the inventory path."""
        self._prepare_dir()
        if build:
            self.compose("build", timeout=BUILD_TIMEOUT_S)
        self.compose("up", "--detach", "--remove-orphans", timeout=BUILD_TIMEOUT_S)
        ports = {service: self.published_port(service) for service in CONTAINER_PORTS}
        self.wait_ready(ports)
        return self.write_inventory(ports)

    def _ready(self, service: str, ports: dict[str, int]) -> bool:
        if service == "backend":
            # 200 only once PostgreSQL (provisioned) and Redis answer the backend itself.
            return http_status(ports["backend"], "/health") == 200
        if service == "frontend":
            return http_status(ports["frontend"], "/health") == 200
        if service == "prometheus":
            if http_status(ports["prometheus"], "/-/ready") != 200:
                return False
            answer = http_json(ports["prometheus"], "/api/v1/targets?state=active")
            targets = (answer or {}).get("data", {}).get("activeTargets", [])
            return bool(targets) and all(t.get("health") in ("up", "down") for t in targets)
        if service == "worker":
            try:
                self.compose("exec", "-T", "worker", "test", "-f", WORKER_READY_FILE, timeout=10)
            except ComposeError:
                return False
            return True
        # PostgreSQL listens on TCP only once its entrypoint has provisioned chatdb; Redis
        # answers PING (NOAUTH counts: it is up) once it has loaded its ACL users.
        probe = {
            "postgres": ["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"],
            "redis": ["redis-cli", "ping"],
        }[service]
        try:
            self.compose("exec", "-T", service, *probe, timeout=10)
        except ComposeError:
            return False
        return True

    def wait_ready(self, ports: dict[str, int], deadline_s: float = DEADLINE_S) -> None:
        """Wait for each service in turn: asking the backend for /health before its database
        is provisioned would make it log errors that the log checks then report."""
        waiting = list(SERVICES)
        deadline = time.monotonic() + deadline_s
        while waiting:
            stopped = [s for s in self.status() if not s.running]
            if stopped:
                name = stopped[0].name
                raise ComposeError(f"{name}: container exited", self._logs(name))
            while waiting and self._ready(waiting[0], ports):
                waiting.pop(0)
            if not waiting:
                return
            if time.monotonic() > deadline:
                name = waiting[0]
                raise ComposeError(f"{name}: not ready after {deadline_s:.0f} s", self._logs(name))
            time.sleep(POLL_S)

    def _logs(self, service: str) -> str:
        try:
            return self.compose("logs", "--no-color", "--tail", "20", service)
        except ComposeError as exc:
            return "\n".join(exc.log_tail)

    def down(self) -> None:
        """Remove every container, the network and the volumes of the project."""
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "10")

    def status(self) -> list[ServiceStatus]:
        containers = self._containers()
        result = []
        for service in SERVICES:
            entry = containers.get(service)
            running = entry is not None and entry.get("State") == "running"
            port = None
            for publisher in (entry or {}).get("Publishers") or []:  # type: ignore[attr-defined]
                if publisher.get("PublishedPort"):
                    port = int(publisher["PublishedPort"])
            name = str(entry["Name"]) if entry else None
            result.append(ServiceStatus(service, running, name, port))
        return result

    def write_inventory(self, ports: dict[str, int]) -> Path:
        import yaml  # only `up` needs it

        sections = target_sections(
            self.layout,
            ports,
            {name: name for name in ("backend", "frontend", "prometheus", "postgres", "redis")},
        )
        for service, limits in RUNBOOK_LIMITS.items():
            sections["services"][service]["limits"] = dict(limits)
        inventory = {
            "name": "compose",
            "compose": {
                "project": self.project,
                "file": str(self.compose_file),
                "docker_host": self.docker_host,
                "dir": str(self.dir),
                "override": str(self.override_file),
            },
            **sections,
            "hosts": {"local": {"spec": "local://", "filesystems": [str(self.dir)]}},
            # Each sandbox is a deployment of its own: its lock, budgets and audit log too.
            "state_dir": str(self.dir / "state"),
        }
        text = "# Written by `python -m opsbook sandbox up --engine compose`; rewritten by up.\n"
        text += yaml.safe_dump(inventory, sort_keys=False, default_flow_style=False)
        self.inventory_path.write_text(text, encoding="utf-8")
        return self.inventory_path
