"""The compose project: the runbook's `docker-compose ps`, `docker stats`, `docker inspect`,
`docker-compose logs` and `docker-compose exec` probes, through the Docker Engine API.

Skipped, saying so, when the inventory has no `compose` section. Podman's Docker API never runs
a HEALTHCHECK by itself, may leave `stats` fields empty, and does not set State.OOMKilled: these
checks read a kill from exit code 137 and skip what the engine does not report.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from opsbook import Severity, check
from opsbook.probes.containers import (
    EXEC_ANSWERS,
    EXEC_PROBES,
    KILLED_EXIT_CODE,
    ComposeProject,
    ContainerState,
    Usage,
    error_lines,
    mib,
)
from remediation import services

pytestmark = [pytest.mark.daily, pytest.mark.compose]

LOG_TAIL_LINES = 2000  # the most a daily run reads of one container's log
EVIDENCE_LINES = 20
EXEC_TIMEOUT_S = 10


def _states(compose_project: ComposeProject, service: str, finding: Any) -> list[ContainerState]:
    states = compose_project.states(service)
    if not states:
        finding.observe("no container", expected="running")
        raise AssertionError(
            f"{service}: no container in project {compose_project.project} "
            f"(expected at least one running; `docker compose up -d {service}`)"
        )
    return states


@check("COMPOSE-001", Severity.CRITICAL, remediation=services.restart_service)
def test_service_containers_run(compose_project: ComposeProject, compose_service, finding) -> None:
    """Every container of the compose service is running.

    Risk: a stopped container is a service that answers nobody: the backend, the queue worker
    or the database is gone until someone starts it again.
    """
    states = _states(compose_project, compose_service, finding)
    stopped = [s for s in states if not s.running]
    finding.observe("; ".join(s.describe() for s in states), expected="all running")
    assert not stopped, f"{compose_service}: " + "; ".join(
        f"{s.name} is {s.status} with exit code {s.exit_code} (expected running)" for s in stopped
    )


@check("COMPOSE-002", Severity.HIGH, remediation=services.restart_service)
def test_containers_not_killed_or_restarting(
    compose_project: ComposeProject, compose_service, thresholds, finding
) -> None:
    """The service's containers were not killed (exit code 137) nor restarted over and over.

    Risk: a container killed at its memory limit, or one the engine keeps restarting, loses the
    requests and messages it held; it will happen again until its limit or its leak is fixed.
    """
    most = thresholds.container_restarts_max
    states = _states(compose_project, compose_service, finding)
    finding.observe(
        "; ".join(f"{s.name} restarts={s.restart_count} exit={s.exit_code}" for s in states),
        expected=f"restarts <= {most}, no exit {KILLED_EXIT_CODE}",
    )
    problems = []
    for state in states:
        if state.killed:
            limit = f"its memory limit ({mib(state.memory_limit)})" if state.memory_limit else ""
            cause = f"{limit} or SIGKILL" if limit else "SIGKILL (no memory limit is set)"
            problems.append(
                f"{state.name} was killed: exit code {state.exit_code}, by {cause} "
                f"(OOMKilled={str(state.oom_killed).lower()}; not every engine sets it)"
            )
        if state.restart_count > most:
            problems.append(f"{state.name} was restarted {state.restart_count} times (max {most})")
    assert not problems, f"{compose_service}: " + "; ".join(problems)


@check("COMPOSE-003", Severity.HIGH)
def test_engine_reports_healthy(compose_project: ComposeProject, compose_service, finding) -> None:
    """The engine reports the service's containers healthy, where it runs a HEALTHCHECK.

    Risk: a container that runs but fails its own health test serves errors; load balancers
    and `depends_on: service_healthy` act on this status.
    """
    states = _states(compose_project, compose_service, finding)
    reported = [s for s in states if s.health is not None]
    if not reported:
        pytest.skip(f"{compose_service}: no HEALTHCHECK declared, the engine reports no health")
    finding.observe("; ".join(f"{s.name} {s.health}" for s in reported), expected="healthy")
    unhealthy = [s for s in reported if s.health == "unhealthy"]
    if not unhealthy and all(s.health == "starting" for s in reported):
        pytest.skip(
            f"{compose_service}: the engine has not run the HEALTHCHECK yet (status starting; "
            "Podman without systemd never runs it on its own: `podman healthcheck run NAME`)"
        )
    for state in unhealthy:
        finding.attach(f"{state.name}: last health probe", state.health_output or "(no output)")
    assert not unhealthy, f"{compose_service}: " + "; ".join(
        f"{s.name} is unhealthy (expected healthy), last probe said: "
        f"{s.health_output.splitlines()[-1] if s.health_output else 'nothing'}"
        for s in unhealthy
    )


def _use_against_limits(
    state: ContainerState, used: Usage, memory_percent: float, cpu_percent: float
) -> tuple[list[str], list[str]]:
    """(what was observed, what is over the limit) for one container."""
    seen, over = [], []
    if state.memory_limit and used.memory_bytes is not None:
        share = 100.0 * used.memory_bytes / state.memory_limit
        seen.append(f"memory {mib(used.memory_bytes)}/{mib(state.memory_limit)} ({share:.0f}%)")
        if share > memory_percent:
            over.append(
                f"{state.name} uses {mib(used.memory_bytes)} of its {mib(state.memory_limit)} "
                f"memory limit ({share:.0f}%, max {memory_percent:g}%)"
            )
    elif used.memory_bytes is None:
        seen.append("memory not reported by the engine")
    else:
        seen.append(f"{used.memory_text()} (no limit)")
    if state.cpu_limit and used.cpus is not None:
        share = 100.0 * used.cpus / state.cpu_limit
        seen.append(f"cpu {used.cpus:.2f}/{state.cpu_limit:g} CPUs ({share:.0f}%)")
        if share > cpu_percent:
            over.append(
                f"{state.name} uses {used.cpus:.2f} of its {state.cpu_limit:g} CPUs "
                f"({share:.0f}%, max {cpu_percent:g}%)"
            )
    elif used.cpus is None:
        seen.append("cpu not reported by the engine")
    else:
        seen.append(f"cpu {used.cpus:.2f} CPUs (no limit)")
    return seen, over


@check("COMPOSE-004", Severity.MEDIUM)
def test_use_within_limits(
    compose_project: ComposeProject, compose_service, compose_usage, thresholds, finding
) -> None:
    """The service's containers use less CPU and memory than their limits allow.

    Risk: a container at its memory limit is killed at the next allocation; one at its CPU
    limit is throttled, and every request it serves waits.
    """
    memory_percent = thresholds.memory_used_percent
    cpu_percent = thresholds.container_cpu_percent
    states = [s for s in _states(compose_project, compose_service, finding) if s.running]
    measured = [(s, compose_usage[s.name]) for s in states if s.name in compose_usage]
    if not measured:
        pytest.skip(f"{compose_service}: no running container to measure (see COMPOSE-001)")
    if not any(s.memory_limit or s.cpu_limit for s, _ in measured):
        pytest.skip(f"{compose_service}: no CPU or memory limit to measure against")
    seen, over = [], []
    for state, used in measured:
        observed, problems = _use_against_limits(state, used, memory_percent, cpu_percent)
        seen.append(f"{state.name}: {', '.join(observed)}")
        over += problems
    finding.observe("; ".join(seen), expected=f"memory <= {memory_percent:g}%, cpu <= "
                    f"{cpu_percent:g}% of the limit")  # fmt: skip
    if all(u.memory_bytes is None and u.cpus is None for _, u in measured):
        pytest.skip(
            f"{compose_service}: the engine reported neither memory nor CPU use "
            "(Podman on hybrid cgroups may leave `docker stats` fields empty)"
        )
    assert not over, f"{compose_service}: " + "; ".join(over)


@check("COMPOSE-005", Severity.MEDIUM)
def test_limits_declared(compose_project: ComposeProject, limited_compose_service, finding) -> None:
    """backend and frontend run with CPU and memory limits (the runbook's override file).

    Risk: without a limit one runaway container takes the whole host's memory or CPU, and the
    kernel kills whatever it picks, PostgreSQL included.
    """
    service = limited_compose_service
    states = _states(compose_project, service, finding)
    finding.observe(
        "; ".join(
            f"{s.name} cpus={s.cpu_limit if s.cpu_limit else 'none'} "
            f"memory={mib(s.memory_limit) if s.memory_limit else 'none'}"
            for s in states
        ),
        expected="a CPU and a memory limit",
    )
    missing = [
        f"{s.name} has no {' and no '.join(what)} limit"
        for s in states
        if (what := [w for w, v in (("CPU", s.cpu_limit), ("memory", s.memory_limit)) if not v])
    ]
    assert not missing, (
        f"{service}: " + "; ".join(missing)
        + " (expected deploy.resources.limits cpus and memory, as the runbook's override sets)"
    )  # fmt: skip


@check("COMPOSE-006", Severity.MEDIUM)
def test_no_recent_errors_in_container_logs(
    compose_project: ComposeProject, compose_service, thresholds, finding
) -> None:
    """No error lines in the service's container logs in the last minutes.

    Risk: a component fails for some requests (a poison message, a lost connection) while its
    container runs and its health check passes; users see errors no other check notices.
    """
    window = thresholds.log_window_s
    since = int(time.time() - window)
    total, problems = 0, []
    for container in compose_project.containers(compose_service):
        raw = container.logs(since=since, tail=LOG_TAIL_LINES, stdout=True, stderr=True)
        errors = error_lines(raw.decode("utf-8", errors="replace"))
        if not errors:
            continue
        total += len(errors)
        shown = errors[-EVIDENCE_LINES:]
        hidden = len(errors) - len(shown)
        more = [f"... ({hidden} earlier error lines not shown)"] if hidden else []
        finding.attach(container.name, "\n".join(more + shown))
        lines = "line" if len(errors) == 1 else "lines"
        problems.append(
            f"{container.name}: {len(errors)} error {lines} in the last {window:g}s "
            f"(expected none), the last: {shown[-1].strip()[:200]}"
        )
    finding.observe(total, expected=0)
    assert not problems, f"{compose_service}: " + "; ".join(problems)


@check("COMPOSE-007", Severity.CRITICAL, remediation=services.restart_service)
def test_unpublished_service_answers_exec_probe(
    compose_project: ComposeProject, unpublished_service, finding
) -> None:
    """PostgreSQL and Redis answer the runbook's exec probes where they are not published.

    Risk: the backend cannot store messages or queue them; with no port on the host, nothing
    else would notice (DB-001 and QUEUE-001 need a published port).
    """
    service = unpublished_service
    command = EXEC_PROBES[service]
    expected = " or ".join(EXEC_ANSWERS[service])
    running = [c for c in compose_project.containers(service) if c.status == "running"]
    if not running:
        finding.observe("not running", expected=expected)
        raise AssertionError(
            f"{service}: no running container to run `{' '.join(command)}` in (expected one)"
        )
    container = running[0]
    # exec_run has no timeout of its own: the probe carries one (`-t 3`), and `timeout` bounds it.
    code, output = container.exec_run(["timeout", str(EXEC_TIMEOUT_S), *command])
    answer = (output or b"").decode("utf-8", errors="replace").strip()
    finding.observe(answer or f"exit code {code}", expected=expected)
    answered = code == 0 and any(word in answer for word in EXEC_ANSWERS[service])
    assert answered, (
        f"{service}: `docker compose exec {service} {' '.join(command)}` in {container.name} "
        f"exited {code} and said {answer[:200]!r} (expected {expected})"
    )
