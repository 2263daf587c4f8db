"""A bad deploy: roll back to the release deployed before it, and verify the stack again."""

from __future__ import annotations

import shlex

from opsbook import releases
from opsbook.canary import run_canary, wait_ready
from opsbook.remediate.context import Context
from opsbook.remediate.plan import RISKY, Plan, Refused, StepKind

ROLLBACK = StepKind.ROLLBACK
CANARY_HOP_S = 10.0


def rollback_release(ctx: Context, *, apply: bool) -> Plan:
    """Roll the sandbox's backend back to the previous release, then verify the stack.

    Changes: points DIR/releases/current at the release deployed before the current one, drops
    the current one from DIR/releases/history and restarts the backend from it (in-flight
    requests to the backend are lost); then waits up to deploy.readiness_deadline_s for every
    service to answer and sends the end-to-end canary. Fails, after rolling back, if the stack
    is not healthy then. Only the sandbox's releases: a compose deployment would roll back by
    image tag, which is not done here.
    Privileges: write access to DIR/releases; control of the sandbox's processes; the admin
    credentials for the canary's cleanup.
    Undo: deploy the rolled-back release again (`opsbook.releases.deploy`).
    """
    plan = Plan.for_fix(ctx, "releases")
    sandbox = ctx.inventory.sandbox
    if sandbox is None:
        return plan.nothing(
            "no sandbox in the inventory: compose rollback by image tag is not done"
        )
    where = ctx.inventory.deploy.releases_dir or releases.releases_dir(sandbox.dir)
    now, before = releases.current(where), releases.previous(where)
    if before is None:
        return plan.nothing(f"no release before {now or 'the packaged backend'} in {where}")
    deadline = ctx.inventory.deploy.readiness_deadline_s

    def roll_back() -> str:
        if ROLLBACK not in RISKY:
            raise Refused(
                f"kind {ROLLBACK!r} is not registered as risky (opsbook.remediate.plan.RISKY), "
                "so it cannot be allowed explicitly: refusing"
            )
        gone, back = releases.rollback(ctx.runtime(), where)
        ready = wait_ready(ctx.inventory, deadline)
        if not ready.ready:
            waiting = "; ".join(f"{what}: {why}" for what, why in ready.not_ready.items())
            raise RuntimeError(f"rolled back {gone} -> {back}, but not ready: {waiting}")
        canary = run_canary(ctx.inventory, CANARY_HOP_S)
        if canary.failed_hop:
            raise RuntimeError(
                f"rolled back {gone} -> {back}, but the canary failed: {canary.problem}"
            )
        total = canary.hops_ms.get("total")
        return f"rolled back {gone} -> {back}; ready in {ready.waited_s:.1f} s; canary {total} ms"

    command = (
        f"ln -sfn {shlex.quote(before)} {where}/current && "
        f"python -m opsbook sandbox restart backend --dir {sandbox.dir}; then wait for /health "
        f"(up to {deadline:g} s) and send the canary"
    )
    plan.add(f"roll back the backend from {now} to {before}", command, ROLLBACK, roll_back)
    return plan.finish(apply, ctx.gate)
