"""Resource limits on compose: the runbook's override file, written from the inventory.

COMPOSE-008 compares the CPU and memory limits each container runs with (`docker inspect`'s
HostConfig, read by opsbook.probes.containers) with the inventory's `services.NAME.limits`; its
fix writes those limits into the deployment's compose override file and recreates the service,
so that the engine applies them. The check and the fix decide with the same function
(`limit_mismatches`): the fix never does more or less than the check asked for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from opsbook import yamltext
from opsbook.inventory import Compose, Inventory, Limits
from opsbook.probes.containers import ComposeProject, ContainerState, connect, size
from opsbook.probes.health import answers_now
from opsbook.remediate import runtime as runtimes
from opsbook.remediate.context import Context, NoRuntime
from opsbook.remediate.plan import Plan, Refused, StepKind
from opsbook.targets import HttpTarget, PostgresTarget, RedisTarget
from opsbook.waiting import until

READY_DEADLINE_S = 30.0
POLL_S = 0.25
HEADER = (
    "# The deployment's compose override: read after the compose file by every compose command\n"
    "# of opsbook. Resource limits written by opsbook.remediation.limits from the inventory's\n"
    "# services.NAME.limits (COMPOSE-008); other keys are kept as they were.\n"
)


def _cpus(cpus: float | None) -> str:
    return "no CPU limit" if cpus is None else f"{cpus:g} CPU{'' if cpus == 1 else 's'}"


def _memory(amount: int | None, what: str) -> str:
    return f"no memory {what}" if amount is None else f"memory {what} {size(amount)}"


def expected_text(expected: Limits) -> str:
    """`2 CPUs, memory limit 2 GiB, memory reservation 1 GiB`: what the inventory asks for."""
    parts = [] if expected.cpus is None else [_cpus(expected.cpus)]
    if expected.memory_bytes is not None:
        parts.append(_memory(expected.memory_bytes, "limit"))
    if expected.memory_reservation_bytes is not None:
        parts.append(_memory(expected.memory_reservation_bytes, "reservation"))
    return ", ".join(parts)


def limit_mismatches(state: ContainerState, expected: Limits) -> list[str]:
    """What of a container's applied limits differs from the expected ones, in words
    (`memory limit 256 MiB`); empty when they are as expected. A value the inventory leaves out
    is not compared."""
    wrong = []
    cpus = state.cpus_limit
    if expected.cpus is not None and (cpus is None or abs(cpus - expected.cpus) > 1e-3):
        wrong.append(_cpus(cpus))
    if expected.memory_bytes is not None and state.memory_limit_bytes != expected.memory_bytes:
        wrong.append(_memory(state.memory_limit_bytes, "limit"))
    reserved = expected.memory_reservation_bytes
    if reserved is not None and state.memory_reservation_bytes != reserved:
        wrong.append(_memory(state.memory_reservation_bytes, "reservation"))
    return wrong


def expected_limits(inventory: Inventory, service: str) -> Limits | None:
    declared = inventory.services.get(service)
    return declared.limits if declared is not None else None


def override_resources(expected: Limits) -> dict[str, Any]:
    """compose's deploy.resources for the expected limits (sizes in the inventory's words)."""
    limits: dict[str, Any] = {}
    if expected.cpus is not None:
        limits["cpus"] = f"{expected.cpus:g}"
    if expected.memory is not None:
        limits["memory"] = expected.memory
    resources: dict[str, Any] = {"limits": limits} if limits else {}
    if expected.memory_reservation is not None:
        resources["reservations"] = {"memory": expected.memory_reservation}
    return resources


def with_limits(document: dict[str, Any], service: str, expected: Limits) -> dict[str, Any]:
    """The override file's document with the service's expected limits set in it; every other
    key (another service, the service's pids limit, its environment) kept."""
    services = document.setdefault("services", {}) or {}
    document["services"] = services
    entry = services.setdefault(service, {}) or {}
    services[service] = entry
    deploy = entry.setdefault("deploy", {}) or {}
    entry["deploy"] = deploy
    resources = deploy.setdefault("resources", {}) or {}
    deploy["resources"] = resources
    for section, values in override_resources(expected).items():
        resources[section] = {**(resources.get(section) or {}), **values}
    return document


def write_override(path: Path, service: str, expected: Limits) -> None:
    """Set the service's limits in the override file (made if missing), replaced atomically."""
    import yaml

    current = yamltext.safe_load(path.read_text(encoding="utf-8")) if path.exists() else None
    if current is not None and not isinstance(current, dict):
        raise ValueError(f"{path}: not a compose file (a mapping at the top)")
    document = with_limits(current or {}, service, expected)
    text = HEADER + yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
    scratch = path.with_name(f".{path.name}.opsbook-new")
    scratch.write_text(text, encoding="utf-8")
    scratch.replace(path)


def _states(compose: Compose, service: str, timeout_s: float) -> list[ContainerState]:
    """COMPOSE-008's facts: the service's containers as the engine shows them now."""
    client = connect(compose.docker_host, timeout_s)
    try:
        return ComposeProject(client, compose.project).states(service)
    finally:
        client.close()


def _answers(inventory: Inventory, service: str) -> bool:
    """Every container of the service runs and every target it serves answers."""
    timeout = inventory.thresholds.timeout_s
    for name in inventory.services[service].targets if service in inventory.services else ():
        if name in inventory.http:
            target: Any = HttpTarget(name, inventory.http[name], timeout)
        elif name in inventory.postgres:
            target = PostgresTarget(name, inventory.postgres[name], timeout)
        elif name in inventory.redis:
            target = RedisTarget(name, inventory.redis[name], timeout)
        else:
            continue
        if not answers_now(target):
            return False
    return True


def write_limits_override(ctx: Context, *, apply: bool) -> Plan:
    """Write the inventory's CPU and memory limits of the service into the compose override
    file, recreate the service so that the engine applies them, and reload what proxies it.

    Changes: sets services.NAME.deploy.resources (limits cpus and memory, reservations memory,
    as services.NAME.limits says) in the deployment's override file (the inventory's
    compose.override, by default compose.override.yaml beside the compose file; made if
    missing; its other keys are kept, its comments are not), then recreates the service's
    containers (`docker compose up --force-recreate --no-deps`: in-flight requests to them are
    lost; the new ones keep the inventory's published port) and waits until they answer, and
    until a service in front of it (nginx before the backend) passes requests on to them. Every
    later compose command of opsbook reads the override after the compose file.
    Privileges: write access to the override file's folder; access to the engine's API (root or
    the docker group on its socket).
    Undo: take the service's deploy.resources out of the override file (or delete the file) and
    recreate the service again (`docker compose up -d --force-recreate --no-deps NAME`).
    """
    plan = Plan.for_fix(ctx)
    compose = ctx.compose_spec()
    service = ctx.target
    inventory = ctx.inventory
    expected = expected_limits(inventory, service)
    if expected is None:
        return plan.nothing(f"the inventory expects no limits of {service}")
    states = _states(compose, service, ctx.thresholds.timeout_s * 3)
    if not states:
        return plan.nothing(f"no container of {service} to recreate (COMPOSE-001 starts it)")
    wrong = {s.name: limit_mismatches(s, expected) for s in states}
    wrong = {name: problems for name, problems in wrong.items() if problems}
    if not wrong:
        return plan.nothing(f"{service} runs with {expected_text(expected)}, as expected")
    override = compose.override_file
    if override is None:
        raise Refused(
            f"{service}: the inventory names no compose file nor compose.override to write the "
            "limits into"
        )
    runtime = ctx.runtime()
    if not isinstance(runtime, runtimes.ComposeRuntime):
        raise NoRuntime(f"{service}: the deployment's runtime is {runtime.name}, not compose")
    runtimes.refuse(runtime, "recreate", service)
    shown = "; ".join(f"{name} runs with {', '.join(p)}" for name, p in wrong.items())

    def write_and_recreate() -> str:
        write_override(override, service, expected)
        runtime.recreate(service)
        if not until(lambda: _answers(inventory, service), READY_DEADLINE_S, POLL_S):
            return f"recreated; {service} does not answer after {READY_DEADLINE_S:g} s"
        from opsbook.deploy import proxies_of, wait_proxying

        # No reload: the stack's nginx looks the service's name up at request time and reaches
        # the new container's address by itself (containers/nginx); wait until it passes the
        # API on. A proxy that is no container of this project reaches the service another way.
        proxies = proxies_of(inventory, (service,))
        wait_proxying(inventory, [p for p in proxies if inventory.runtime_of(p) == "compose"])
        return "recreated, answers"

    resources = override_resources(expected)
    plan.add(
        f"set {service}'s limits to {expected_text(expected)} ({shown}) in {override} and "
        f"recreate {service}",
        f"write services.{service}.deploy.resources = {json.dumps(resources)} into {override}; "
        + runtime.command("recreate", service, with_override=True),
        StepKind.RECREATE,
        write_and_recreate,
        service=service,
    )
    return plan.finish(apply, ctx.gate)
