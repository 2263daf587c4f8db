"""The compose project: the runbook's `docker-compose ps`, `docker stats`, `docker inspect`,
`docker-compose logs` and `docker-compose exec` probes, through the Docker Engine API.

Skipped, saying so, when the inventory has no `compose` section. Podman's Docker API never runs
a HEALTHCHECK by itself, may leave `stats` fields empty, and does not set State.OOMKilled: these
checks read a kill from exit code 137 and skip what the engine does not report. The facts are
read by opsbook/probes/containers.py; each check reads them again when it runs, so that a check
verifying its fix sees the fixed container.
"""

from __future__ import annotations

import pytest

from opsbook import Finding, Inventory, Severity, Thresholds, Unit, check
from opsbook.probes.containers import (
    EXEC_ANSWERS,
    EXEC_PROBES,
    KILLED_EXIT_CODE,
    ComposeProject,
    ContainerState,
    Usage,
    exec_kind,
    exec_probe,
    log_errors,
    mib,
)
from opsbook.remediation import limits, services

pytestmark = [pytest.mark.daily, pytest.mark.compose]

LOG_TAIL_LINES = 2000  # the most a daily run reads of one container's log
EVIDENCE_LINES = 20


def _containers(project: ComposeProject, service: str, finding: Finding) -> list[ContainerState]:
    """The service's containers; a service without any fails (nothing of it runs)."""
    states = project.states(service)
    if not states:
        finding.observe("no container", expected="at least one running")
        finding.fail(
            f"no container in project {project.project} "
            f"(expected at least one running; `docker compose up -d {service}`)"
        )
    return states


@check("COMPOSE-001", Severity.CRITICAL, remediation=services.restart_service)
def test_service_containers_run(
    compose_project: ComposeProject, compose_service: str, finding: Finding
) -> None:
    """Every container of the compose service is running.

    Risk: a stopped container is a service that answers nobody: the backend, the queue worker
    or the database is gone until someone starts it again.
    """
    states = _containers(compose_project, compose_service, finding)
    stopped = [
        f"{s.name} is {s.status} with exit code {s.exit_code}" for s in states if not s.running
    ]
    finding.expect(
        {s.name: s.describe() for s in states},
        "all running",
        ok=not stopped,
        problem="; ".join(stopped),
    )


def _killed(state: ContainerState) -> str:
    limit = state.memory_limit_bytes
    cause = (
        f"its memory limit ({mib(limit)}) or SIGKILL"
        if limit
        else "SIGKILL (no memory limit is set)"
    )
    return (
        f"{state.name} was killed: exit code {state.exit_code}, by {cause} "
        f"(OOMKilled={str(state.oom_killed).lower()}; not every engine sets it)"
    )


@check("COMPOSE-002", Severity.HIGH, remediation=services.restart_service)
def test_containers_not_killed_or_restarting(
    compose_project: ComposeProject, compose_service: str, thresholds: Thresholds, finding: Finding
) -> None:
    """The service's containers were not killed (exit code 137) nor restarted over and over.

    Risk: a container killed at its memory limit, or one the engine keeps restarting, loses the
    requests and messages it held; it will happen again until its limit or its leak is fixed.
    """
    most = thresholds.container_restarts_max
    states = _containers(compose_project, compose_service, finding)
    problems = [_killed(s) for s in states if s.killed] + [
        f"{s.name} was restarted {s.restart_count} times" for s in states if s.restart_count > most
    ]
    finding.expect(
        {s.name: {"restarts": s.restart_count, "exit_code": s.exit_code} for s in states},
        f"restarts <= {most}, no exit code {KILLED_EXIT_CODE}",
        ok=not problems,
        problem="; ".join(problems),
    )


@check("COMPOSE-003", Severity.HIGH, remediation=services.restart_service)
def test_engine_reports_healthy(
    compose_project: ComposeProject, compose_service: str, finding: Finding
) -> None:
    """The engine reports the service's containers healthy, where it runs a HEALTHCHECK.

    Risk: a container that runs but fails its own health test serves errors; load balancers
    and `depends_on: service_healthy` act on this status.
    """
    states = _containers(compose_project, compose_service, finding)
    reported = [s for s in states if s.health is not None]
    if not reported:
        pytest.skip(f"{compose_service}: no HEALTHCHECK declared, the engine reports no health")
    if all(s.health == "starting" for s in reported):
        pytest.skip(
            f"{compose_service}: the engine has not run the HEALTHCHECK yet (status starting; "
            "Podman without systemd never runs it on its own: `podman healthcheck run NAME`)"
        )
    unhealthy = [s for s in reported if s.health == "unhealthy"]
    for state in unhealthy:
        finding.attach(f"{state.name}: last health probe", state.health_output or "(no output)")
    finding.expect(
        {s.name: s.health for s in reported},
        "healthy",
        ok=not unhealthy,
        problem="; ".join(
            f"{s.name} is unhealthy, its last probe said: "
            f"{(s.health_output.splitlines() or ['nothing'])[-1]}"
            for s in unhealthy
        ),
    )


def _against_limits(
    state: ContainerState, used: Usage, memory_max: float, cpu_max: float
) -> tuple[dict[str, float | None], list[str]]:
    """(the use and its share of each limit, what is over the allowed share) of one container."""
    memory, memory_limit = used.memory_bytes, state.memory_limit_bytes
    cpus, cpus_limit = used.cpus_used, state.cpus_limit
    seen: dict[str, float | None] = {
        "memory_bytes": memory,
        "memory_limit_bytes": memory_limit,
        "cpus_used": cpus,
        "cpus_limit": cpus_limit,
    }
    over = []
    if memory is not None and memory_limit:
        share = seen["memory_percent"] = round(100.0 * memory / memory_limit, 1)
        if share > memory_max:
            over.append(
                f"{state.name} uses {mib(memory)} of its {mib(memory_limit)} memory limit "
                f"({share:.0f}%, max {memory_max:g}%)"
            )
    if cpus is not None and cpus_limit:
        share = seen["cpu_percent"] = round(100.0 * cpus / cpus_limit, 1)
        if share > cpu_max:
            over.append(
                f"{state.name} uses {cpus:.2f} of its {cpus_limit:g} CPUs "
                f"({share:.0f}%, max {cpu_max:g}%)"
            )
    return seen, over


@check("COMPOSE-004", Severity.MEDIUM)
def test_use_within_limits(
    compose_project: ComposeProject,
    compose_service: str,
    compose_usage: dict[str, Usage],
    thresholds: Thresholds,
    finding: Finding,
) -> None:
    """The service's containers use less CPU and memory than their limits allow.

    Risk: a container at its memory limit is killed at the next allocation; one at its CPU
    limit is throttled, and every request it serves waits.
    """
    memory_max, cpu_max = thresholds.memory_used_percent, thresholds.container_cpu_percent
    running = [s for s in _containers(compose_project, compose_service, finding) if s.running]
    measured = [(s, compose_usage[s.name]) for s in running if s.name in compose_usage]
    if not measured:
        pytest.skip(f"{compose_service}: no running container to measure (see COMPOSE-001)")
    if not any(s.memory_limit_bytes or s.cpus_limit for s, _ in measured):
        pytest.skip(f"{compose_service}: no CPU or memory limit to measure against")
    if all(u.memory_bytes is None and u.cpus_used is None for _, u in measured):
        pytest.skip(
            f"{compose_service}: the engine reported neither memory nor CPU use "
            "(Podman on hybrid cgroups may leave `docker stats` fields empty)"
        )
    judged = {s.name: _against_limits(s, u, memory_max, cpu_max) for s, u in measured}
    over = [problem for _, problems in judged.values() for problem in problems]
    finding.expect(
        {name: seen for name, (seen, _) in judged.items()},
        f"memory <= {memory_max:g}%, cpu <= {cpu_max:g}% of the limit",
        ok=not over,
        problem="; ".join(over),
    )


def _absent_limits(state: ContainerState) -> str:
    """`CPU and no memory`, `CPU`, `memory`, or "" when both limits are set."""
    limits = (("CPU", state.cpus_limit), ("memory", state.memory_limit_bytes))
    return " and no ".join(what for what, limit in limits if not limit)


@check("COMPOSE-005", Severity.MEDIUM)
def test_limits_declared(
    compose_project: ComposeProject, limited_compose_service: str, finding: Finding
) -> None:
    """backend and frontend run with CPU and memory limits (the runbook's override file).

    Risk: without a limit one runaway container takes the whole host's memory or CPU, and the
    kernel kills whatever it picks, PostgreSQL included.
    """
    states = _containers(compose_project, limited_compose_service, finding)
    missing = [f"{s.name} has no {_absent_limits(s)} limit" for s in states if _absent_limits(s)]
    finding.expect(
        {s.name: {"cpus": s.cpus_limit, "memory_bytes": s.memory_limit_bytes} for s in states},
        "deploy.resources.limits cpus and memory, as the runbook's override sets",
        ok=not missing,
        problem="; ".join(missing),
    )


@check("COMPOSE-006", Severity.MEDIUM)
def test_no_recent_errors_in_container_logs(
    compose_project: ComposeProject, compose_service: str, thresholds: Thresholds, finding: Finding
) -> None:
    """No error lines in the service's container logs in the last minutes.

    Risk: a component fails for some requests (a poison message, a lost connection) while its
    container runs and its health check passes; users see errors no other check notices.
    """
    window = thresholds.log_window_s
    logged = log_errors(compose_project, compose_service, window, LOG_TAIL_LINES)
    found = [e for e in logged if e.lines]
    for errors in found:
        hidden = len(errors.lines) - EVIDENCE_LINES
        more = [f"... ({hidden} earlier error lines not shown)"] if hidden > 0 else []
        finding.attach(errors.container, "\n".join(more + list(errors.lines[-EVIDENCE_LINES:])))
    finding.expect(
        sum(len(e.lines) for e in logged),
        "no error line",
        unit=Unit.COUNT,
        ok=not found,
        problem="; ".join(
            f"{e.container}: {len(e.lines)} error line{'s' if len(e.lines) > 1 else ''} in the "
            f"last {window:g}s, the last: {e.lines[-1].strip()[:200]}"
            for e in found
        ),
    )


@check("COMPOSE-007", Severity.CRITICAL, remediation=services.restart_service)
def test_unpublished_service_answers_exec_probe(
    compose_project: ComposeProject, unpublished_service: str, inventory: Inventory,
    finding: Finding,
) -> None:  # fmt: skip
    """PostgreSQL and Redis answer the runbook's exec probes where they are not published.

    Risk: the backend cannot store messages or queue them; with no port on the host, nothing
    else would notice (DB-001 and QUEUE-001 need a published port). A service named otherwise
    (the runbook's `database`) is probed by its role under `services:`.
    """
    service = unpublished_service
    kind = exec_kind(inventory, service) or service  # the fixture chose it for having one
    expected = " or ".join(EXEC_ANSWERS[kind])
    answer = exec_probe(compose_project, service, kind)
    if answer is None:
        finding.observe("not running", expected=expected)
        command = " ".join(EXEC_PROBES[kind])
        finding.fail(f"no running container to run `{command}` in (expected one)")
    finding.expect(
        answer.output or f"exit code {answer.exit_code}",
        expected,
        ok=answer.exit_code == 0 and any(word in answer.output for word in EXEC_ANSWERS[kind]),
        problem=f"`docker compose exec {service} {' '.join(answer.command)}` in "
        f"{answer.container} exited {answer.exit_code} and said {answer.output[:200]!r}",
    )


@check("COMPOSE-008", Severity.MEDIUM, remediation=limits.write_limits_override)
def test_limits_as_expected(
    compose_project: ComposeProject,
    limited_compose_service: str,
    inventory: Inventory,
    finding: Finding,
) -> None:
    """The service's containers run with the CPU and memory limits the inventory expects.

    Risk: a backend limited below what the runbook sizes it for is throttled and killed at its
    limit under ordinary load (a 256 MiB backend dies where a 2 GiB one serves); one above it
    starves its neighbours on the host. The engine applies what the compose file (and its
    override) said at the last recreate: only what runs counts. Not applicable natively: the
    sandbox's processes run without limits (no container engine enforces any).
    """
    service = limited_compose_service
    expected = limits.expected_limits(inventory, service)
    if expected is None:
        pytest.skip(f"{service}: the inventory expects no limits (services.{service}.limits)")
    states = _containers(compose_project, service, finding)
    wrong = {s.name: limits.limit_mismatches(s, expected) for s in states}
    finding.expect(
        {
            s.name: {
                "cpus": s.cpus_limit,
                "memory_limit_bytes": s.memory_limit_bytes,
                "memory_reservation_bytes": s.memory_reservation_bytes,
            }
            for s in states
        },
        f"{limits.expected_text(expected)}: services.{service}.limits",
        ok=not any(wrong.values()),
        problem="; ".join(
            f"{name} runs with {', '.join(problems)}"
            for name, problems in wrong.items()
            if problems
        ),
    )
