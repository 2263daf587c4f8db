"""Service down: the runbook's restart, escalating to a recreate."""

from __future__ import annotations

import time

from opsbook.probes.health import answers_now
from opsbook.remediate.context import Context
from opsbook.remediate.plan import Plan, StepKind
from opsbook.targets import HttpTarget, PostgresTarget, RedisTarget

READY_DEADLINE_S = 20.0
POLL_S = 0.25


def _healthy(ctx: Context) -> bool:
    """Whether the failing target answers now: a connection of its own, not the run's cached
    one (which remembers the failure); a compose service, whether it runs."""
    timeout = ctx.thresholds.timeout_s
    if ctx.target_kind == "compose":
        return ctx.runtime().is_running(ctx.service())
    if ctx.target_kind == "http":
        return answers_now(HttpTarget(ctx.target, ctx.http_spec(), timeout))
    if ctx.target_kind == "postgres":
        return answers_now(PostgresTarget(ctx.target, ctx.postgres_spec(), timeout))
    if ctx.target_kind == "redis":
        return answers_now(RedisTarget(ctx.target, ctx.redis_spec(), timeout))
    raise ValueError(f"cannot tell whether a {ctx.target_kind} target is healthy")


def _healthy_within(ctx: Context, deadline_s: float) -> bool:
    end = time.monotonic() + deadline_s
    while not _healthy(ctx):
        if time.monotonic() >= end:
            return False
        time.sleep(POLL_S)
    return True


def restart_service(ctx: Context, *, apply: bool) -> Plan:
    """Restart the failing target's service; recreate it if a restart does not make it healthy.

    Changes: restarts the service through the runtime the inventory names (the sandbox's
    process control, or the container engine); only if it is still unhealthy
    20 s later, recreates it. In-flight requests to it are lost.
    Privileges: control of the runtime (the sandbox owner, or access to the Docker API).
    Undo: nothing to undo; the service runs the same configuration as before.
    """
    plan = Plan.for_fix(ctx)
    if _healthy(ctx):
        return plan.nothing(f"{ctx.target} answers now")
    runtime, service = ctx.runtime(), ctx.service()

    def restart() -> str:
        runtime.restart(service)
        return "healthy" if _healthy_within(ctx, READY_DEADLINE_S) else "still unhealthy"

    plan.add(f"restart {service}", runtime.command("restart", service), StepKind.RESTART, restart)
    plan.add(
        f"recreate {service}",
        runtime.command("recreate", service),
        StepKind.RECREATE,
        lambda: runtime.recreate(service),
        only_if=(f"if {ctx.target} is still unhealthy", lambda: not _healthy(ctx)),
    )
    return plan.finish(apply, ctx.gate)
