"""Maintenance windows: nginx serves the maintenance page (503 everywhere), then the site again.

Not linked to any check: a person asks for it (`python -m opsbook maintenance on|off`), because
turning it on takes the chat down for every user on purpose.
"""

from __future__ import annotations

from pathlib import Path

from opsbook.inventory import Inventory
from opsbook.remediate.context import Context
from opsbook.remediate.plan import Plan, StepKind
from opsbook.remediate.runtime import runtime_for
from opsbook.targets import HttpTarget

KIND = StepKind.MAINTENANCE_MODE


class MaintenanceUnsupported(Exception):
    """The inventory's runtime has no maintenance switch opsbook knows how to use."""


def _flag(inventory: Inventory) -> Path:
    if inventory.sandbox is None:
        runtime = f"compose project {inventory.compose.project}" if inventory.compose else "none"
        raise MaintenanceUnsupported(
            f"maintenance mode is switched by opsbook for the sandbox runtime only (this "
            f"inventory's runtime: {runtime}); switch nginx to its maintenance page by hand, "
            "as the maintenance-window runbook says"
        )
    sandbox = runtime_for(inventory)
    flag = sandbox.maintenance_flag() if sandbox is not None else None
    if flag is None:
        raise MaintenanceUnsupported(f"no sandbox nginx in {inventory.sandbox.dir} (is it up?)")
    return flag


def _frontend_answers(inventory: Inventory, expected: int, timeout_s: float) -> str:
    """Every frontend's /health answers `expected`; raises (naming the answer) otherwise."""
    answers = []
    for name, endpoint in sorted(inventory.endpoints("frontend").items()):
        frontend = HttpTarget(name, endpoint, timeout_s)
        try:
            status = frontend.health().status_code
        finally:
            frontend.close()
        if status != expected:
            raise RuntimeError(f"{name} {endpoint.health_path} answers {status}, not {expected}")
        answers.append(f"{name} {endpoint.health_path} answers {status}")
    return "; ".join(answers) or "done (no frontend in the inventory to ask)"


def maintenance_on(ctx: Context, *, apply: bool) -> Plan:
    """Put the frontend into maintenance mode: every path, /health included, answers 503 with
    the maintenance page.

    Changes: creates the sandbox's flag file DIR/nginx/maintenance.on, which nginx tests on
    every request (no reload), then asks each frontend's /health and expects 503. Every user
    sees the maintenance page until maintenance_off; HEALTH-001 fails for the frontend
    meanwhile. Other runtimes raise MaintenanceUnsupported for now.
    Privileges: write access to the sandbox directory (its owner).
    Undo: maintenance_off (`python -m opsbook maintenance off`).
    """
    plan = Plan.for_fix(ctx)
    flag = _flag(ctx.inventory)
    if flag.exists():
        return plan.nothing(f"maintenance mode is already on ({flag} exists)")

    def turn_on() -> str:
        # Exclusive create: if someone else turned it on meanwhile, say so rather than pretend.
        with flag.open("x", encoding="utf-8"):
            pass
        flag.chmod(0o644)  # nginx's workers (nobody as root) must see it
        return _frontend_answers(ctx.inventory, 503, ctx.thresholds.timeout_s)

    plan.add("turn maintenance mode on (503 everywhere)", f"touch {flag}", KIND, turn_on)
    return plan.finish(apply, ctx.gate)


def maintenance_off(ctx: Context, *, apply: bool) -> Plan:
    """End maintenance mode: the frontend serves the site again.

    Changes: removes the sandbox's flag file DIR/nginx/maintenance.on, then asks each
    frontend's /health and expects 200. Other runtimes raise MaintenanceUnsupported for now.
    Privileges: write access to the sandbox directory (its owner).
    Undo: maintenance_on.
    """
    plan = Plan.for_fix(ctx)
    flag = _flag(ctx.inventory)
    if not flag.exists():
        return plan.nothing(f"maintenance mode is already off ({flag} does not exist)")

    def turn_off() -> str:
        flag.unlink()
        return _frontend_answers(ctx.inventory, 200, ctx.thresholds.timeout_s)

    plan.add("turn maintenance mode off (serve the site)", f"rm {flag}", KIND, turn_off)
    return plan.finish(apply, ctx.gate)
