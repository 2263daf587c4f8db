"""Service down: the runbook's restart, escalating to a recreate; a scrape target down.

A fix restarts the service that owns the failing target, as the inventory's services model
says (`Inventory.service_of`): Redis for QUEUE-001, PostgreSQL for DB-001, never a service that
depends on it. Whether it is healthy is asked with the check's own probe: an answer to PING,
SELECT 1 or GET health for a target, every container running and none unhealthy for a compose
service (ComposeProject.states, what COMPOSE-001 and COMPOSE-003 read).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from opsbook.inventory import Inventory
from opsbook.probes.containers import ComposeProject, connect
from opsbook.probes.health import answers_now
from opsbook.probes.prometheus import ScrapeTarget, scrape_targets
from opsbook.remediate import runtime as runtimes
from opsbook.remediate.context import Context, NoRuntime
from opsbook.remediate.plan import Plan, StepKind
from opsbook.remediate.runtime import Runtime
from opsbook.targets import HttpTarget, PostgresTarget, RedisTarget
from opsbook.waiting import until

READY_DEADLINE_S = 20.0
POLL_S = 0.25


def owner(ctx: Context) -> str:
    """The service that owns the failing target (a compose check's target is the service)."""
    if ctx.target_kind in ("compose", "service"):
        return ctx.target
    return ctx.inventory.service_of(ctx.target)


def runtime_of(ctx: Context, service: str) -> Runtime:
    """The runtime that drives `service`: its own (`services.NAME.runtime`: systemd, command),
    else the deployment's (sandbox or compose, the context's); NoRuntime when none can."""
    declared = ctx.inventory.runtime_of(service)
    if declared is None:
        raise NoRuntime(f"the inventory names no runtime that drives {service}")
    inventory = ctx.inventory
    deployment = "sandbox" if inventory.sandbox else "compose" if inventory.compose else None
    if declared == deployment:
        return ctx.runtime()
    return runtimes.runtime_named(ctx.inventory, declared)


def _compose_problems(ctx: Context, service: str) -> list[str]:
    """COMPOSE-001's and COMPOSE-003's view of a compose service: what is not well."""
    compose = ctx.inventory.compose
    assert compose is not None
    client = connect(compose.docker_host, ctx.thresholds.timeout_s * 3)
    try:
        states = ComposeProject(client, compose.project).states(service)
    finally:
        client.close()
    if not states:
        return [f"no container of {service}"]
    return [f"{s.name} is {s.describe()}" for s in states if not s.running] + [
        f"{s.name} is unhealthy" for s in states if s.health == "unhealthy"
    ]


def _target_answers(inventory: Inventory, kind: str, name: str) -> bool:
    """Whether a target answers now: a connection of its own, not the run's cached one (which
    remembers the failure)."""
    timeout = inventory.thresholds.timeout_s
    if kind == "http":
        return answers_now(HttpTarget(name, inventory.http[name], timeout))
    if kind == "postgres":
        return answers_now(PostgresTarget(name, inventory.postgres[name], timeout))
    if kind == "redis":
        return answers_now(RedisTarget(name, inventory.redis[name], timeout))
    raise ValueError(f"cannot tell whether a {kind} target is healthy")


def _healthy(ctx: Context) -> bool:
    if ctx.target_kind == "compose":
        return not _compose_problems(ctx, ctx.target)
    if ctx.target_kind == "service":  # HEALTH-005: its runtime says it runs
        return runtime_of(ctx, ctx.target).is_running(ctx.target)
    return _target_answers(ctx.inventory, ctx.target_kind, ctx.target)


def restart_service(ctx: Context, *, apply: bool) -> Plan:
    """Restart the service that owns the failing target; recreate it if a restart does not
    make it healthy.

    Changes: restarts the owning service (the inventory's services model: Redis for the queue,
    PostgreSQL for the database; never a service that depends on it) through its runtime
    (sandbox, compose, systemd or command); only if it is still unhealthy 20 s later, and
    where the runtime can, recreates it. In-flight requests to it are lost. A compose service
    is healthy when every one of its containers runs and none is unhealthy.
    Privileges: control of the service's runtime (the sandbox owner, access to the Docker API,
    or systemctl or the inventory's commands on the service's host).
    Undo: nothing to undo; the service runs the same configuration as before.
    """
    plan = Plan.for_fix(ctx)
    if ctx.target_kind == "compose":
        problems = _compose_problems(ctx, ctx.target)
        if not problems:
            return plan.nothing(f"every container of {ctx.target} runs and none is unhealthy")
        why = f" ({'; '.join(problems)})"
    elif _healthy(ctx):
        return plan.nothing(f"{ctx.target} answers now")
    else:
        why = ""
    service = owner(ctx)
    runtime = runtime_of(ctx, service)
    runtimes.refuse(runtime, "restart", service)
    if service != ctx.target:
        why = f", which serves {ctx.target}{why}"

    def restart() -> str:
        runtime.restart(service)
        healthy = until(lambda: _healthy(ctx), READY_DEADLINE_S, POLL_S)
        return "healthy" if healthy else "still unhealthy"

    plan.add(
        f"restart {service}{why}",
        runtime.command("restart", service),
        StepKind.RESTART,
        restart,
        service=service,
    )
    if runtime.refusal("recreate", service) is None:  # a systemd unit has no image, say
        plan.add(
            f"recreate {service}",
            runtime.command("recreate", service),
            StepKind.RECREATE,
            lambda: runtime.recreate(service),
            only_if=(f"if {ctx.target} is still unhealthy", lambda: not _healthy(ctx)),
            service=service,
        )
    return plan.finish(apply, ctx.gate)


def _address(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else ""


def scraped_target(inventory: Inventory, scraped: ScrapeTarget) -> tuple[str, str] | None:
    """(kind, name) of the inventory's target a Prometheus scrape target is: the one at its
    instance's host:port, else the one (or the service's target) its job is named after."""
    addresses: dict[str, tuple[str, str]] = {}
    for name, endpoint in inventory.http.items():
        addresses[_address(endpoint.url)] = ("http", name)
    for name, database in inventory.postgres.items():
        addresses[f"{database.host}:{database.port}"] = ("postgres", name)
    for name, queue in inventory.redis.items():
        addresses[_address(queue.url)] = ("redis", name)
    if scraped.instance in addresses:
        return addresses[scraped.instance]
    for kind, section in (
        ("http", inventory.http), ("postgres", inventory.postgres), ("redis", inventory.redis),
    ):  # fmt: skip
        for name in section:
            if scraped.job in (name, inventory.service_of(name)):
                return kind, name
    return None


def restart_scrape_targets(ctx: Context, *, apply: bool) -> Plan:
    """Restart the service of each Prometheus scrape target that is down.

    Changes: for each scrape target whose `up` is 0, restarts the service that owns it (the
    inventory's target at the scrape target's host:port, or named like its job), through its
    runtime, then waits up to 20 s for it to answer and for Prometheus to scrape it
    up again. In-flight requests to it are lost. A scrape target the inventory does not know is
    named in the plan and left alone.
    Privileges: read access to Prometheus's API; control of each service's runtime.
    Undo: nothing to undo; each service runs the same configuration as before.
    """
    plan = Plan.for_fix(ctx)
    prometheus = HttpTarget(ctx.target, ctx.http_spec(), ctx.thresholds.timeout_s)
    try:
        # Prometheus's view, once its next scrape is in when that is due soon: a service
        # restarted since its last scrape is up, and restarting it again is worse than nothing.
        seen = scrape_targets(prometheus, next_scrape_within_s=ctx.thresholds.timeout_s)
        down = [target for target in seen if target.up != "1"]
    finally:
        prometheus.close()
    if not down:
        return plan.nothing("every scrape target is up")
    unknown = [target.name for target in down if scraped_target(ctx.inventory, target) is None]
    owned: dict[str, list[tuple[str, str]]] = {}
    for target in down:
        found = scraped_target(ctx.inventory, target)
        if found is not None:
            owned.setdefault(ctx.inventory.service_of(found[1]), []).append(found)
    if not owned:
        raise LookupError(
            f"no target of the inventory is scrape target {', '.join(unknown)}: restart its "
            "service by hand"
        )

    def scraped_up(names: set[str]) -> bool:
        target = HttpTarget(ctx.target, ctx.http_spec(), ctx.thresholds.timeout_s)
        try:
            return all(t.up == "1" for t in scrape_targets(target) if t.name in names)
        finally:
            target.close()

    for service, targets in owned.items():
        runtime = runtime_of(ctx, service)
        runtimes.refuse(runtime, "restart", service)
        names = {t.name for t in down if scraped_target(ctx.inventory, t) in targets}

        def restart(
            runtime: Runtime = runtime, service: str = service,
            targets: list[tuple[str, str]] = targets, names: set[str] = names,
        ) -> str:  # fmt: skip
            runtime.restart(service)
            if not until(
                lambda: all(_target_answers(ctx.inventory, *t) for t in targets),
                READY_DEADLINE_S,
                POLL_S,
            ):
                return f"{service} does not answer after {READY_DEADLINE_S:g} s"
            if not until(lambda: scraped_up(names), READY_DEADLINE_S, POLL_S):
                return f"{service} answers; Prometheus has not scraped it up yet"
            return "answers, scraped up"

        plan.add(
            f"restart {service}: scrape target {', '.join(sorted(names))} is down"
            + (f" (not in the inventory, left alone: {', '.join(unknown)})" if unknown else ""),
            runtime.command("restart", service),
            StepKind.RESTART,
            restart,
            service=service,
        )
    return plan.finish(apply, ctx.gate)
