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
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC
from functools import lru_cache
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
    info = compose_file.stat()
    return list(_declared_services(compose_file, info.st_mtime_ns, info.st_size))


@lru_cache(maxsize=8)
def _declared_services(compose_file: Path, mtime_ns: int, size: int) -> tuple[str, ...]:
    # Read once per version of the file: collection asks for every check that takes a service
    # (18 times in a daily run), and parsing the file each time cost 40 ms of a 1.7 s run.
    from opsbook import yamltext

    document = yamltext.safe_load(compose_file.read_text(encoding="utf-8")) or {}
    services = document.get("services") or {}
    return tuple(sorted(n for n, spec in services.items() if not (spec or {}).get("profiles")))


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
    memory_reservation_bytes: int | None = None  # HostConfig.MemoryReservation; None: none
    command: tuple[str, ...] = ()  # what it runs: Path and Args (the entrypoint and command)
    node: bool = False  # a Node.js service: it runs node (npm, npx, ...), or its image is Node's

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


def memory_reservation_bytes(host_config: Mapping[str, Any]) -> int | None:
    """HostConfig.MemoryReservation (compose's reservations.memory, a soft limit); None: 0."""
    reserved = int(host_config.get("MemoryReservation") or 0)
    return reserved if reserved > 0 else None


# What a Node.js service runs; the official node images set NODE_VERSION.
NODE_PROGRAMS = frozenset({"node", "nodejs", "npm", "npx", "yarn", "pnpm"})


def runs_node(command: Sequence[str], environment: Sequence[str]) -> bool:
    """Whether a container runs Node.js: a program of NODE_PROGRAMS in its command (also as
    `sh -c "node server.js"`), or NODE_VERSION or NODE_OPTIONS in its environment."""
    words = [word for part in command for word in str(part).split()]
    if any(word.rsplit("/", 1)[-1] in NODE_PROGRAMS for word in words):
        return True
    return any(
        str(item).split("=", 1)[0] in ("NODE_VERSION", "NODE_OPTIONS") for item in environment
    )


def container_state(attrs: Mapping[str, Any]) -> ContainerState:
    """The facts of `docker inspect` (a container's attrs in the SDK)."""
    state = attrs.get("State") or {}
    host_config = attrs.get("HostConfig") or {}
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    health = state.get("Health") or {}
    log = health.get("Log") or []
    command = tuple(str(part) for part in [attrs.get("Path") or "", *(attrs.get("Args") or [])])
    command = tuple(part for part in command if part)
    environment = (attrs.get("Config") or {}).get("Env") or []
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
        memory_reservation_bytes=memory_reservation_bytes(host_config),
        command=command,
        node=runs_node(command, environment),
    )


class Usage(Struct, frozen=True):
    """What `docker stats --no-stream` shows for one container; None where the engine left a
    field empty (Podman on hybrid cgroups)."""

    memory_bytes: int | None
    cpus_used: float | None  # CPUs in use between two samples (1.0 = one core busy)


def mib(count: int) -> str:
    return f"{count / 2**20:.0f} MiB"


def size(count: int) -> str:
    """A memory size as a person writes it: `2 GiB`, `1.5 GiB`, `256 MiB`."""
    if count >= 2**30:
        return f"{count / 2**30:.2f}".rstrip("0").rstrip(".") + " GiB"
    return mib(count)


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
# The SDK's lowest API version: a placeholder until the engine's own is read from /_ping.
_PLACEHOLDER_API_VERSION = "1.24"
ONE_SHOT_API_VERSION = (1, 41)  # `stats?one-shot=true`: Docker answers without its 1 s wait


def _client(docker_host: str | None, version: str | None, timeout: int) -> Any:
    import docker

    if docker_host:
        return docker.DockerClient(base_url=docker_host, version=version, timeout=timeout)
    return docker.from_env(version=version, timeout=timeout)


def connect(docker_host: str | None, timeout_s: float = ENGINE_TIMEOUT_S) -> Any:
    """A docker SDK client for `docker_host` (None: the client's default, $DOCKER_HOST), whose
    engine answered /_ping.

    The engine's API version is read from /_ping's `API-Version` header, not from /version as
    the SDK does on its own: Podman answers /version in about 0.5 s (it gathers the host's
    facts), /_ping in 2 ms.
    """
    import docker.errors

    timeout = max(1, round(timeout_s))
    probe = _client(docker_host, _PLACEHOLDER_API_VERSION, timeout)
    try:
        # Unversioned, as `docker` itself pings: any engine answers it.
        answer = probe.api.get(f"{probe.api.base_url}/_ping", timeout=timeout)
        answer.raise_for_status()
    except Exception as exc:  # requests' errors, OSError: as the SDK's own version lookup says
        reason = str(exc).split("\n", 1)[0] or type(exc).__name__
        raise docker.errors.DockerException(f"no answer to /_ping: {reason}") from None
    finally:
        probe.close()
    # An engine without the header: the SDK asks /version itself.
    return _client(docker_host, answer.headers.get("API-Version"), timeout)


def _one_shot(client: Any) -> dict[str, bool]:
    version = tuple(int(part) for part in str(client.api.api_version).split(".")[:2])
    return {"one_shot": True} if version >= ONE_SHOT_API_VERSION else {}


class UsageWindow:
    """CPU and memory use of every running container of the project: two one-shot `docker
    stats` samples at least `window_s` apart, each taken for all containers at once.

    The first sample (with its own `docker ps` of the running containers) is taken in the
    background as soon as the window is opened, so that the time between the two samples is
    spent on other checks rather than asleep; CPU use is the CPU time used between the samples
    over the time between them, however long that was. A container removed in between (a fix
    recreated it) is left out. An engine error is raised, as NotEvaluated, by `usage()`.
    """

    def __init__(self, project: ComposeProject, window_s: float) -> None:
        self.project = project
        self.window_s = window_s
        # One thread, ended once the first sample is in: each engine call in it is bounded
        # by the client's timeout.
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="opsbook-stats")
        self._first: Future[tuple[dict[str, Any], float, dict[str, Any]]]
        self._first = pool.submit(self._first_sample)
        pool.shutdown(wait=False)

    def _first_sample(self) -> tuple[dict[str, Any], float, dict[str, Any]]:
        listed = self.project.client.containers.list(  # running ones only, as `docker stats`
            filters={"label": [f"{PROJECT_LABEL}={self.project.project}"]}, sparse=True
        )
        # A sparse container has no `Name`, its `Names` (`/name` on Docker, `name` on Podman).
        running = {str((c.attrs.get("Names") or [c.id])[0]).lstrip("/"): c for c in listed}
        started = time.monotonic()
        return running, started, self._sample(running)

    def _sample(self, running: Mapping[str, Any]) -> dict[str, Any]:
        """Every container's one-shot stats at once (None: removed since the first sample):
        the engine takes its time per container (Podman about 0.1 s), and one after another
        that adds up (the runbook's `docker stats` asks the engine for all of them at once)."""
        import docker.errors

        extra = _one_shot(self.project.client)

        def stats(container: Any) -> Any:
            try:
                return container.stats(stream=False, **extra)
            except docker.errors.NotFound:
                return None

        if not running:
            return {}
        with ThreadPoolExecutor(max_workers=len(running)) as pool:
            return dict(zip(running, pool.map(stats, running.values()), strict=True))

    def usage(self) -> dict[str, Usage]:
        """The use of every running container, by name (waits out the rest of the window)."""
        with asking_engine(self.project.label, "docker stats"):
            running, started, first = self._first.result()
            time.sleep(max(0.0, self.window_s - (time.monotonic() - started)) if running else 0)
            elapsed = time.monotonic() - started
            second = self._sample(running)
        return {
            name: usage_between(first[name], answer, elapsed)
            for name, answer in second.items()
            if answer is not None and first[name] is not None
        }


def usage(project: ComposeProject, window_s: float) -> dict[str, Usage]:
    """CPU and memory use of every running container of the project, by name: two one-shot
    `docker stats` samples, `window_s` apart, taken for all containers at once."""
    return UsageWindow(project, window_s).usage()


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
# A compose service named otherwise (the runbook's `database`) is probed by its role in the
# inventory's services model.
EXEC_ROLES = {"database": "postgres", "queue": "redis"}


def exec_kind(inventory: Any, service: str) -> str | None:
    """Which exec probe a compose service answers (a key of EXEC_PROBES): by its name, else by
    its role under `services:`; None when it has none."""
    if service in EXEC_PROBES:
        return service
    spec = inventory.services.get(service)
    return EXEC_ROLES.get(spec.role) if spec is not None else None


def exec_probe(
    project: ComposeProject, service: str, kind: str, timeout_s: float = EXEC_TIMEOUT_S
) -> ExecAnswer | None:
    """The exec probe of its kind (EXEC_PROBES) run in the service's first running container;
    None when none runs."""
    command = EXEC_PROBES[kind]
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
    return [s for s in declared if exec_kind(inventory, s) is not None and s not in reached]


def error_lines(text: str) -> list[str]:
    """The error lines of a container log the engine already cut to the window (`since`): the
    runbook's `grep -iE 'error|exception|...'`, without the lines that say info or debug."""
    return [line.text for line in logs.error_lines(text, UTC)]
