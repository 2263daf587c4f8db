"""A compose project on a container engine, as the Docker Engine API shows it.

The runbook's `docker-compose ps`, `docker stats`, `docker inspect`, `docker-compose logs` and
`docker-compose exec`, read through the docker SDK (every call bounded by the client's timeout,
an exec by `timeout` inside the container) and returned as typed facts. The facts are built from
the API's JSON by pure functions, tested without an engine. checks/test_compose.py decides what
the facts mean; an engine error becomes `NotEvaluated`, naming the service or the project.

Podman's Docker API differs from Docker's in ways these readers tolerate: it never runs a
HEALTHCHECK on its own (health stays `starting`), some `stats` fields are empty, and a container
killed by its memory limit exits with 137 while `State.OOMKilled` stays false, so a kill is read
from the exit code, never from that flag.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC
from pathlib import Path
from typing import Any

from msgspec import Struct

from opsbook.errors import NotEvaluated
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
    cpus_limit: float | None  # CPUs (0.5 = half a core); None: unlimited
    memory_limit_bytes: int | None  # None: unlimited

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def killed(self) -> bool:
        """Ended by SIGKILL: its memory limit (OOMKilled is not reported by every engine)."""
        return self.oom_killed or (not self.running and self.exit_code == KILLED_EXIT_CODE)

    def describe(self) -> str:
        """`docker ps`-like: `running` or `exited (137)`."""
        return self.status if self.running else f"{self.status} ({self.exit_code})"


def cpus_limit(host_config: Mapping[str, Any]) -> float | None:
    """The CPU limit in CPUs, from NanoCpus (`cpus:`) or CpuQuota/CpuPeriod (`cpu_quota:`)."""
    nano = host_config.get("NanoCpus") or 0
    if nano > 0:
        return float(nano) / 1e9
    quota, period = host_config.get("CpuQuota") or 0, host_config.get("CpuPeriod") or 0
    if quota > 0 and period > 0:
        return float(quota) / float(period)
    return None


def memory_limit_bytes(host_config: Mapping[str, Any]) -> int | None:
    """HostConfig.Memory; None when unlimited (0)."""
    memory = int(host_config.get("Memory") or 0)
    return memory if memory > 0 else None


def container_state(attrs: Mapping[str, Any]) -> ContainerState:
    """The facts of `docker inspect` (a container's attrs in the SDK)."""
    state = attrs.get("State") or {}
    host_config = attrs.get("HostConfig") or {}
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    health = state.get("Health") or {}
    log = health.get("Log") or []
    return ContainerState(
        name=str(attrs.get("Name", "")).lstrip("/"),
        service=str(labels.get(SERVICE_LABEL, "")),
        status=str(state.get("Status") or "unknown"),
        exit_code=int(state.get("ExitCode") or 0),
        restart_count=int(attrs.get("RestartCount") or 0),
        oom_killed=bool(state.get("OOMKilled")),
        health=str(health["Status"]) if health.get("Status") else None,
        health_output=str(log[-1].get("Output") or "").strip() if log else "",
        cpus_limit=cpus_limit(host_config),
        memory_limit_bytes=memory_limit_bytes(host_config),
    )


class Usage(Struct, frozen=True):
    """What `docker stats --no-stream` shows for one container; None where the engine left a
    field empty (Podman on hybrid cgroups)."""

    memory_bytes: int | None
    cpus_used: float | None  # CPUs in use between two samples (1.0 = one core busy)


def mib(count: int) -> str:
    return f"{count / 2**20:.0f} MiB"


def _cpu_total(stats: Mapping[str, Any]) -> int | None:
    total = ((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage")
    return int(total) if total else None


def usage_between(first: Mapping[str, Any], second: Mapping[str, Any], elapsed_s: float) -> Usage:
    """Memory from the second one-shot stats sample; CPUs from the CPU time used between the
    two (Podman's one-shot answer has no `precpu_stats` to compare with)."""
    memory = second.get("memory_stats") or {}
    used = memory.get("usage")
    details = memory.get("stats") or {}
    cache = details.get("inactive_file") or details.get("total_inactive_file") or 0
    cpus = None
    before, after = _cpu_total(first), _cpu_total(second)
    if before is not None and after is not None and elapsed_s > 0 and after >= before:
        cpus = (after - before) / 1e9 / elapsed_s
    return Usage(
        # `docker stats` leaves the page cache out of "MEM USAGE" (cgroup v2: inactive_file,
        # v1: total_inactive_file).
        memory_bytes=int(used) - int(cache) if used else None,
        cpus_used=cpus,
    )


class LogErrors(Struct, frozen=True):
    """The error lines of one container's log in the window, oldest first."""

    container: str
    lines: tuple[str, ...]


class ExecAnswer(Struct, frozen=True):
    """What an exec probe said in a running container of the service."""

    container: str
    command: tuple[str, ...]
    exit_code: int
    output: str  # stdout and stderr, stripped


def _engine_errors() -> tuple[type[BaseException], ...]:
    import docker.errors
    import requests

    return (docker.errors.DockerException, requests.RequestException, OSError)


@contextmanager
def asking_engine(label: str, what: str) -> Iterator[None]:
    """An engine that fails or does not answer in time: the fact is not evaluated, never made
    up."""
    try:
        yield
    except _engine_errors() as exc:
        reason = str(exc).split("\n", 1)[0] or type(exc).__name__
        raise NotEvaluated(f"{label}: {what}: {reason}") from None


class ComposeProject:
    """The containers of one compose project, through the docker SDK (`docker.DockerClient`,
    whose timeout bounds every call)."""

    def __init__(self, client: Any, project: str) -> None:
        self.client = client
        self.project = project
        # One engine snapshot per run: the project's containers are listed (and inspected)
        # once, not once per service and check; forget() after a fix changed them.
        self._snapshot: list[Any] | None = None

    def forget(self) -> None:
        """Read the containers afresh at the next question (a fix changed them)."""
        self._snapshot = None

    @property
    def label(self) -> str:
        return f"compose project {self.project}"

    def _inspect(self, listed: Any) -> Any:
        import docker.errors

        try:
            return self.client.containers.get(listed.id)
        except docker.errors.NotFound:
            return None  # removed between the list and its inspect (a recreate): it is gone

    def containers(self, service: str | None = None) -> list[Any]:
        """The project's containers (of one service), stopped ones included, by number."""
        if self._snapshot is None:
            with asking_engine(service or self.label, "docker ps"):
                # ignore_removed: a container removed between the list and its inspect (a
                # recreate) is not an error, it is gone.
                listed = self.client.containers.list(
                    all=True, filters={"label": [f"{PROJECT_LABEL}={self.project}"]}, sparse=True
                )
                # Inspected all at once (the SDK's own list inspects one after another).
                with ThreadPoolExecutor(max_workers=max(1, len(listed))) as pool:
                    found = [c for c in pool.map(self._inspect, listed) if c is not None]
            self._snapshot = sorted(found, key=lambda c: int(c.labels.get(NUMBER_LABEL, "0") or 0))
        if service is None:
            return list(self._snapshot)
        return [c for c in self._snapshot if c.labels.get(SERVICE_LABEL) == service]

    def states(self, service: str | None = None) -> list[ContainerState]:
        """`docker inspect` of the project's containers (of one service), by number."""
        return [container_state(c.attrs) for c in self.containers(service)]


ENGINE_TIMEOUT_S = 10.0


def connect(docker_host: str | None, timeout_s: float = ENGINE_TIMEOUT_S) -> Any:
    """A docker SDK client for `docker_host` (None: the client's default, $DOCKER_HOST)."""
    import docker

    if docker_host:
        return docker.DockerClient(base_url=docker_host, timeout=max(1, round(timeout_s)))
    return docker.from_env(timeout=max(1, round(timeout_s)))


def usage(project: ComposeProject, window_s: float) -> dict[str, Usage]:
    """CPU and memory use of every running container of the project, by name: two one-shot
    `docker stats` samples, `window_s` apart, taken for all containers at once."""
    running = [c for c in project.containers() if c.status == "running"]
    if not running:
        return {}

    def sample() -> dict[str, Any]:
        # Every container's one-shot stats at once: the engine takes its time per container
        # (Podman about 0.1 s), and one after another that adds up (the runbook's `docker
        # stats` asks the engine for all of them at once too).
        with ThreadPoolExecutor(max_workers=len(running)) as pool:
            answers = pool.map(lambda c: c.stats(stream=False), running)
            return {c.name: answer for c, answer in zip(running, answers, strict=True)}

    with asking_engine(project.label, "docker stats"):
        started = time.monotonic()
        first = sample()
        time.sleep(window_s)
        elapsed = time.monotonic() - started
        second = sample()
    return {name: usage_between(first[name], second[name], elapsed) for name in second}


def log_errors(
    project: ComposeProject, service: str, window_s: float, tail_lines: int
) -> list[LogErrors]:
    """The error lines each container of the service logged in the last `window_s` seconds
    (`docker compose logs --since --tail`), at most `tail_lines` lines read of each."""
    since = int(time.time() - window_s)
    found = []
    for container in project.containers(service):
        with asking_engine(service, f"docker logs {container.name}"):
            raw = container.logs(since=since, tail=tail_lines, stdout=True, stderr=True)
        text = raw.decode("utf-8", errors="replace")
        found.append(LogErrors(container.name, tuple(error_lines(text))))
    return found


# The runbook's `docker-compose exec` probes, for services that are not published to the host
# (where they are, DB-001 and QUEUE-001 connect directly). PING without credentials answers
# NOAUTH on an ACL-protected Redis: that is an answer, so Redis is up.
EXEC_PROBES: dict[str, tuple[str, ...]] = {
    "postgres": ("pg_isready", "-t", "3"),
    "redis": ("redis-cli", "ping"),
}
EXEC_ANSWERS = {"postgres": ("accepting connections",), "redis": ("PONG", "NOAUTH")}
EXEC_TIMEOUT_S = 10


def exec_probe(
    project: ComposeProject, service: str, timeout_s: float = EXEC_TIMEOUT_S
) -> ExecAnswer | None:
    """The service's exec probe (EXEC_PROBES) run in its first running container; None when
    none runs."""
    command = EXEC_PROBES[service]
    running = [c for c in project.containers(service) if c.status == "running"]
    if not running:
        return None
    container = running[0]
    # exec_run has no timeout of its own: `timeout` bounds the command inside the container.
    with asking_engine(service, f"docker exec {container.name}"):
        code, output = container.exec_run(["timeout", str(round(timeout_s)), *command])
    text = (output or b"").decode("utf-8", errors="replace").strip()
    return ExecAnswer(container.name, command, int(code), text)


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
