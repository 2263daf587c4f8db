"""Service down: the runbook's restart, escalating to a recreate."""

from __future__ import annotations

from opsbook.remediate.context import Context
from opsbook.remediate.plan import Plan, StepKind
from remediation.probes import healthy, healthy_within

READY_DEADLINE_S = 20.0


def restart_service(ctx: Context, *, apply: bool) -> Plan:
    """Restart the failing target's service; recreate it if a restart does not make it healthy.

    Changes: restarts the service through the runtime the inventory names (the sandbox's
    process control, or the container engine); only if it is still unhealthy
    20 s later, recreates it. In-flight requests to it are lost.
    Privileges: control of the runtime (the sandbox owner, or access to the Docker API).
    Undo: nothing to undo; the service runs the same configuration as before.
    """
    plan = Plan.for_fix(ctx)
    if healthy(ctx):
        return plan.nothing(f"{ctx.target} answers now")
    runtime, service = ctx.runtime(), ctx.service()

    def restart() -> str:
        runtime.restart(service)
        return "healthy" if healthy_within(ctx, READY_DEADLINE_S) else "still unhealthy"

    plan.add(f"restart {service}", runtime.command("restart", service), StepKind.RESTART, restart)
    plan.add(
        f"recreate {service}",
        runtime.command("recreate", service),
        StepKind.RECREATE,
        lambda: runtime.recreate(service),
        only_if=(f"if {ctx.target} is still unhealthy", lambda: not healthy(ctx)),
    )
    return plan.finish(apply, ctx.gate)
