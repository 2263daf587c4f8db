"""A compose project on a container engine, as the Docker Engine API shows it.

The runbook's `docker-compose ps`, `docker stats`, `docker inspect` and `docker-compose logs`,
read through the docker SDK. The facts are plain dataclasses built from the API's JSON by pure
functions (tested without an engine); `ComposeProject` is the one part that talks to the engine.
checks/test_compose.py decides what the facts mean.

Podman's Docker API differs from Docker's in ways these readers tolerate: it never runs a
HEALTHCHECK on its own (health stays `starting`), some `stats` fields are empty, and a container
killed by its memory limit exits with 137 while `State.OOMKilled` stays false, so a kill is read
from the exit code, never from that flag.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC
from pathlib import Path
from typing import Any

from msgspec import Struct

from opsbook.probes import logs

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
NUMBER_LABEL = "com.docker.compose.container-number"
KILLED_EXIT_CODE = 137  # 128 + SIGKILL: the kernel's OOM killer, or `docker kill`


def declared_services(compose_file: Path) -> list[str]:
    """The services compose.yaml declares (what `docker compose config --services` lists,
    without the CLI; services behind a profile are left out, as compose leaves them out)."""
    from opsbook import yamltext

    document = yamltext.safe_load(compose_file.read_text(encoding="utf-8")) or {}
    services = document.get("services") or {}
    return sorted(name for name, spec in services.items() if not (spec or {}).get("profiles"))


class ContainerState(Struct, frozen=True):
    """One container of a compose service: `docker inspect`'s State and limits."""

    name: str
    service: str
    status: str  # created, running, paused, restarting, exited, dead
    exit_code: int
    restart_count: int
    oom_killed: bool
    health: str | None  # starting, healthy, unhealthy; None: no HEALTHCHECK
    health_output: str  # the last health probe's output, if the engine kept one
    cpu_limit: float | None  # CPUs (0.5 = half a core); None: unlimited
    memory_limit: int | None  # bytes; None: unlimited

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def killed(self) -> bool:
        """Ended by SIGKILL: its memory limit (OOMKilled is not reported by every engine)."""
        return self.oom_killed or (not self.running and self.exit_code == KILLED_EXIT_CODE)

    def describe(self) -> str:
        """`docker ps`-like: `NAME running` or `NAME exited (137)`."""
        state = self.status if self.running else f"{self.status} ({self.exit_code})"
        return f"{self.name} {state}"


def cpu_limit(host_config: Mapping[str, Any]) -> float | None:
    """The CPU limit in CPUs, from NanoCpus (`cpus:`) or CpuQuota/CpuPeriod (`cpu_quota:`)."""
    nano = host_config.get("NanoCpus") or 0
    if nano > 0:
        return float(nano) / 1e9
    quota, period = host_config.get("CpuQuota") or 0, host_config.get("CpuPeriod") or 0
    if quota > 0 and period > 0:
        return float(quota) / float(period)
    return None


def container_state(attrs: Mapping[str, Any]) -> ContainerState:
    """The facts of `docker inspect` (a container's attrs in the SDK)."""
    state = attrs.get("State") or {}
    host_config = attrs.get("HostConfig") or {}
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    health = state.get("Health") or {}
    log = health.get("Log") or []
    memory = host_config.get("Memory") or 0
    return ContainerState(
        name=str(attrs.get("Name", "")).lstrip("/"),
        service=str(labels.get(SERVICE_LABEL, "")),
        status=str(state.get("Status") or "unknown"),
        exit_code=int(state.get("ExitCode") or 0),
        restart_count=int(attrs.get("RestartCount") or 0),
        oom_killed=bool(state.get("OOMKilled")),
        health=str(health["Status"]) if health.get("Status") else None,
        health_output=str(log[-1].get("Output") or "").strip() if log else "",
        cpu_limit=cpu_limit(host_config),
        memory_limit=int(memory) if memory > 0 else None,
    )


class Usage(Struct, frozen=True):
    """What `docker stats --no-stream` shows for one container; None where the engine left a
    field empty (Podman on hybrid cgroups)."""

    memory_bytes: int | None
    memory_limit: int | None  # as stats reports it: the host's memory when unlimited
    cpus: float | None  # CPUs in use between two samples (1.0 = one core busy)

    def memory_text(self) -> str:
        if self.memory_bytes is None:
            return "memory: not reported"
        return f"memory {mib(self.memory_bytes)}"


def mib(count: int) -> str:
    return f"{count / 2**20:.0f} MiB"


def _cpu_total(stats: Mapping[str, Any]) -> int | None:
    total = ((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage")
    return int(total) if total else None


def usage(first: Mapping[str, Any], second: Mapping[str, Any], elapsed_s: float) -> Usage:
    """Memory from the second one-shot stats sample; CPUs from the CPU time used between the
    two (Podman's one-shot answer has no `precpu_stats` to compare with)."""
    memory = second.get("memory_stats") or {}
    used = memory.get("usage")
    details = memory.get("stats") or {}
    cache = details.get("inactive_file") or details.get("total_inactive_file") or 0
    limit = memory.get("limit")
    cpus = None
    before, after = _cpu_total(first), _cpu_total(second)
    if before is not None and after is not None and elapsed_s > 0 and after >= before:
        cpus = (after - before) / 1e9 / elapsed_s
    return Usage(
        # `docker stats` leaves the page cache out of "MEM USAGE" (cgroup v2: inactive_file,
        # v1: total_inactive_file).
        memory_bytes=int(used) - int(cache) if used else None,
        memory_limit=int(limit) if limit else None,
        cpus=cpus,
    )


class ComposeProject:
    """The containers of one compose project, through the docker SDK (`docker.DockerClient`)."""

    def __init__(self, client: Any, project: str) -> None:
        self.client = client
        self.project = project

    def containers(self, service: str | None = None) -> list[Any]:
        """The project's containers (of one service), stopped ones included, by number."""
        labels = [f"{PROJECT_LABEL}={self.project}"]
        if service is not None:
            labels.append(f"{SERVICE_LABEL}={service}")
        found = self.client.containers.list(all=True, filters={"label": labels})
        return sorted(found, key=lambda c: int(c.labels.get(NUMBER_LABEL, "0") or 0))

    def states(self, service: str) -> list[ContainerState]:
        return [container_state(c.attrs) for c in self.containers(service)]

    def running_services(self) -> list[str]:
        return sorted({c.labels.get(SERVICE_LABEL, "") for c in self.containers()} - {""})


ENGINE_TIMEOUT_S = 10.0


def connect(docker_host: str | None, timeout_s: float = ENGINE_TIMEOUT_S) -> Any:
    """A docker SDK client for `docker_host` (None: the client's default, $DOCKER_HOST)."""
    import docker

    if docker_host:
        return docker.DockerClient(base_url=docker_host, timeout=max(1, round(timeout_s)))
    return docker.from_env(timeout=max(1, round(timeout_s)))


# The runbook's `docker-compose exec` probes, for services that are not published to the host
# (where they are, DB-001 and QUEUE-001 connect directly). PING without credentials answers
# NOAUTH on an ACL-protected Redis: that is an answer, so Redis is up.
EXEC_PROBES: dict[str, tuple[str, ...]] = {
    "postgres": ("pg_isready", "-t", "3"),
    "redis": ("redis-cli", "ping"),
}
EXEC_ANSWERS = {"postgres": ("accepting connections",), "redis": ("PONG", "NOAUTH")}


def unpublished_services(inventory: Any, declared: list[str]) -> list[str]:
    """Declared services with an exec probe that no inventory target reaches directly."""
    reached = {
        target.service
        for section in (inventory.postgres, inventory.redis)
        for target in section.values()
        if target.service
    }
    return [s for s in declared if s in EXEC_PROBES and s not in reached]


def error_lines(text: str) -> list[str]:
    """The error lines of a container log the engine already cut to the window (`since`): the
    runbook's `grep -iE 'error|exception|...'`, without the lines that say info or debug."""
    return [line.text for line in logs.error_lines(text, UTC)]
