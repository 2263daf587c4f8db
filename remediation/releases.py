"""A bad deploy: roll back to the release deployed before it, and verify the stack again."""

from __future__ import annotations

import shlex
from collections.abc import Callable

from opsbook import deploy, releases
from opsbook.canary import run_canary, wait_ready
from opsbook.inventory import Inventory
from opsbook.remediate.context import Context
from opsbook.remediate.plan import RISKY, Plan, Refused, Step, StepKind
from opsbook.remediate.runner import state_dir

ROLLBACK = StepKind.ROLLBACK
RESTORE = StepKind.RESTORE
CANARY_HOP_S = 10.0


def _require_risky() -> None:
    # Until the kind is registered as risky, the runner's gate would let it through without an
    # allow-list: refuse rather than change production unasked.
    if ROLLBACK not in RISKY:
        raise Refused(
            f"kind {ROLLBACK!r} is not registered as risky (opsbook.remediate.plan.RISKY), "
            "so it cannot be allowed explicitly: refusing"
        )


def _verified(inventory: Inventory, gone: str, back: str) -> str:
    """Readiness and the canary after a rollback; the step's result, or RuntimeError."""
    ready = wait_ready(inventory, inventory.deploy.readiness_deadline_s)
    if not ready.ready:
        waiting = "; ".join(f"{what}: {why}" for what, why in ready.not_ready.items())
        raise RuntimeError(f"rolled back {gone} -> {back}, but not ready: {waiting}")
    canary = run_canary(inventory, CANARY_HOP_S)
    if canary.failed_hop:
        raise RuntimeError(f"rolled back {gone} -> {back}, but the canary failed: {canary.problem}")
    total = canary.hops_ms.get("total")
    return f"rolled back {gone} -> {back}; ready in {ready.waited_s:.1f} s; canary {total} ms"


def rollback_release(ctx: Context, *, apply: bool) -> Plan:
    """Roll back to the release deployed before the current one, then verify the stack.

    Changes: the sandbox: points DIR/releases/current at the release deployed before the
    current one, drops the current one from DIR/releases/history and restarts the backend from
    it. Compose: points the compose file's image names back at the images of the release that
    `opsbook deploy` recorded before the current one (STATE/releases.json) and recreates the
    services it deployed (`docker compose up --detach --force-recreate --no-deps`), and reloads
    the services in front of them (nginx). systemd or command: runs the inventory's
    deploy.commands.rollback with that release's tag. In-flight requests to the replaced
    services are lost. Then waits up to deploy.readiness_deadline_s for every service to answer
    and sends the end-to-end canary; fails, after rolling back, if the stack is not healthy
    then. Only with --allow=restore as well (compose, commands): restores the backup taken just
    before the current release was deployed, as restore_backup does (opsbook.remediation.
    backup): what was written since is lost.
    Privileges: the sandbox: write access to DIR/releases and control of its processes;
    compose: the container engine (docker tag, docker compose up); commands: what the rollback
    command needs on deploy.host; the admin credentials for the canary's cleanup (and those
    restore_backup needs).
    Undo: deploy the rolled-back release again (`opsbook deploy --tag TAG`, or
    `opsbook.releases.deploy` on the sandbox); a restore only by restoring a newer backup.
    """
    plan = Plan.for_fix(ctx, "releases")
    if ctx.inventory.sandbox is not None:
        return _sandbox(ctx, plan, apply)
    recorded = releases.deployed(state_dir(ctx.inventory))
    if len(recorded) < 2:
        now = recorded[-1].tag if recorded else "nothing"
        where = state_dir(ctx.inventory) / releases.RELEASES_FILE
        return plan.nothing(
            f"no release before {now} is recorded in {where} (opsbook deploy records them)"
        )
    current, before = recorded[-1], recorded[-2]
    if ctx.inventory.compose is not None:
        if not before.images:
            return plan.nothing(f"release {before.tag} has no images recorded to bring back")
        images = deploy.compose_images(ctx.inventory)
        command = " && ".join(deploy.bring_up_commands(ctx.inventory, images, before))
        bring_back = _compose_bring_back(ctx, images, current, before)
    elif ctx.inventory.deploy.commands is not None:
        command = ctx.inventory.deploy.commands.rollback.replace("{tag}", shlex.quote(before.tag))
        bring_back = _commands_bring_back(ctx, command, current, before)
    else:
        return plan.nothing("the inventory has no compose: section and no deploy.commands")
    deadline = ctx.inventory.deploy.readiness_deadline_s
    plan.add(
        f"roll back from {current.tag} to {before.tag}",
        f"{command}; then wait for readiness (up to {deadline:g} s) and send the canary",
        ROLLBACK,
        bring_back,
    )
    refusals: dict[int, str] = {}
    _add_restore(ctx, plan, current, refusals)
    done = plan.finish(apply, ctx.gate)
    for index, reason in refusals.items():
        done.steps[index].result = f"not done: {reason}"
    return done


def _compose_bring_back(
    ctx: Context,
    images: deploy.Images,
    current: releases.DeployedRelease,
    before: releases.DeployedRelease,
) -> Callable[[], str]:
    def bring_back() -> str:
        _require_risky()
        deploy.bring_up(ctx.inventory, images, before)
        releases.drop_newest(state_dir(ctx.inventory))
        return _verified(ctx.inventory, current.tag, before.tag)

    return bring_back


def _commands_bring_back(
    ctx: Context, command: str, current: releases.DeployedRelease, before: releases.DeployedRelease
) -> Callable[[], str]:
    def bring_back() -> str:
        _require_risky()
        deploy.host_run(ctx.inventory, "rollback", command, str)
        releases.drop_newest(state_dir(ctx.inventory))
        return _verified(ctx.inventory, current.tag, before.tag)

    return bring_back


def _add_restore(
    ctx: Context, plan: Plan, current: releases.DeployedRelease, refusals: dict[int, str]
) -> None:
    """The pre-deploy backup's restore, as one conditional step that applies the backup's own
    fix (opsbook.remediation.backup.restore_backup, its plan shown as the command): taken only
    when restore is allowed (the gate says so; asked once, it is not asked again: the budget is
    spent once), else left out, saying why."""
    from opsbook.remediation.backup import restore_backup

    if current.backup is None or ctx.inventory.backup is None:
        return
    name = current.backup
    nested = Context(ctx.inventory, ctx.check_id, "backup", name, fix=restore_backup)
    shown = restore_backup(nested, apply=False)

    def restore() -> str:
        nested.gate, nested.run_id = ctx.gate, ctx.run_id
        done = restore_backup(nested, apply=True)
        if done.nothing_to_do is not None:
            return f"nothing to do: {done.nothing_to_do}"
        return f"restored {name}: " + "; ".join(s.result or "done" for s in done.steps)

    plan.steps.append(
        Step(
            f"restore {name}, the backup taken before {current.tag} was deployed",
            " && ".join(shown.lines()),
            RESTORE,
            restore,
            when=_allowed(ctx, plan, len(plan.steps), refusals),
            condition="with --allow=restore",
        )
    )


def _allowed(ctx: Context, plan: Plan, index: int, refusals: dict[int, str]) -> Callable[[], bool]:
    def allowed() -> bool:
        try:
            ctx.gate(plan.steps[index])
        except Refused as exc:
            refusals[index] = str(exc)
            return False
        return True

    return allowed


def _sandbox(ctx: Context, plan: Plan, apply: bool) -> Plan:
    sandbox = ctx.inventory.sandbox
    assert sandbox is not None
    where = ctx.inventory.deploy.releases_dir or releases.releases_dir(sandbox.dir)
    now, before = releases.current(where), releases.previous(where)
    if before is None:
        return plan.nothing(f"no release before {now or 'the packaged backend'} in {where}")
    deadline = ctx.inventory.deploy.readiness_deadline_s

    def roll_back() -> str:
        _require_risky()
        gone, back = releases.rollback(ctx.runtime(), where)
        return _verified(ctx.inventory, gone, back)

    command = (
        f"ln -sfn {shlex.quote(before)} {where}/current && "
        f"python -m opsbook sandbox restart backend --dir {sandbox.dir}; then wait for /health "
        f"(up to {deadline:g} s) and send the canary"
    )
    plan.add(f"roll back the backend from {now} to {before}", command, ROLLBACK, roll_back)
    return plan.finish(apply, ctx.gate)
