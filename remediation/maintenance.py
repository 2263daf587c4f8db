"""Maintenance windows: nginx serves the maintenance page (503 everywhere), then the site again.

Not linked to any check: a person asks for it (`python -m opsbook maintenance on|off`), because
turning it on takes the chat down for every user on purpose.
"""

from __future__ import annotations

from opsbook.inventory import Inventory
from opsbook.remediate.context import Context
from opsbook.remediate.plan import Plan, StepKind
from opsbook.remediate.runtime import Runtime, maintenance_served, runtime_of
from opsbook.targets import HttpTarget

KIND = StepKind.MAINTENANCE_MODE


class MaintenanceUnsupported(Exception):
    """The frontend's runtime has no maintenance switch opsbook knows how to use."""


def _frontend(inventory: Inventory) -> tuple[str, Runtime]:
    """The service that serves the frontend (its nginx), and the runtime that drives it."""
    names = sorted(inventory.endpoints("frontend"))
    service = inventory.service_of(names[0]) if names else "nginx"
    runtime = runtime_of(inventory, service)
    if runtime is None:
        raise MaintenanceUnsupported(
            f"no runtime drives {service} (name one under services: in the inventory)"
        )
    why = runtime.refusal("maintenance", service)
    if why is not None:
        raise MaintenanceUnsupported(
            f"{runtime.name} runtime: cannot switch {service}'s maintenance page: {why}; "
            "switch nginx to its maintenance page by hand, as the maintenance-window runbook says"
        )
    return service, runtime


def _served(inventory: Inventory, timeout_s: float) -> list[str]:
    """The frontends that serve the maintenance page now, read from the entry itself: a page
    switched on by hand counts as much as opsbook's."""
    served = []
    for name, endpoint in sorted(inventory.endpoints("frontend").items()):
        frontend = HttpTarget(name, endpoint, timeout_s)
        try:
            if maintenance_served(frontend):
                served.append(name)
        finally:
            frontend.close()
    return served


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

    Changes: switches the frontend's nginx to its maintenance page through the service's
    runtime (the sandbox's flag file; in a compose stack, the flag file inside the frontend's
    container and an nginx reload; on a systemd host, the service's maintenance_flag file and
    `systemctl reload`; under the command runtime, the inventory's maintenance_on command),
    then asks each frontend's /health and expects 503. Every user sees the maintenance page
    until maintenance_off; the frontend's checks are not applicable meanwhile. A runtime
    without the switch (a systemd service without maintenance_flag, a command service without
    maintenance_on/maintenance_off) raises MaintenanceUnsupported.
    Privileges: control of the frontend's runtime (the sandbox directory's owner, the container
    engine, or on a host the service's user with sudo for the flag file and systemctl reload,
    or for its commands).
    Undo: maintenance_off (`opsbook maintenance off`).
    """
    plan = Plan.for_fix(ctx)
    service, runtime = _frontend(ctx.inventory)
    served = _served(ctx.inventory, ctx.thresholds.timeout_s)
    if served:
        return plan.nothing(f"maintenance mode is already on ({', '.join(served)} serves the page)")

    def turn_on() -> str:
        runtime.maintenance(True, service)
        return _frontend_answers(ctx.inventory, 503, ctx.thresholds.timeout_s)

    plan.add(
        "turn maintenance mode on (503 everywhere)",
        runtime.maintenance_command(True, service),
        KIND,
        turn_on,
        service=service,
    )
    return plan.finish(apply, ctx.gate)


def maintenance_off(ctx: Context, *, apply: bool) -> Plan:
    """End maintenance mode: the frontend serves the site again.

    Changes: switches the frontend's nginx back through the service's runtime (removes the
    flag file, in a compose stack inside the container and on a systemd host the service's
    maintenance_flag, then an nginx reload; or the inventory's maintenance_off command), then
    asks each frontend's /health and expects 200. Runtimes with no switch raise
    MaintenanceUnsupported.
    Privileges: control of the frontend's runtime.
    Undo: maintenance_on.
    """
    plan = Plan.for_fix(ctx)
    service, runtime = _frontend(ctx.inventory)
    if not _served(ctx.inventory, ctx.thresholds.timeout_s):
        return plan.nothing("maintenance mode is already off (no frontend serves the page)")

    def turn_off() -> str:
        runtime.maintenance(False, service)
        return _frontend_answers(ctx.inventory, 200, ctx.thresholds.timeout_s)

    plan.add(
        "turn maintenance mode off (serve the site)",
        runtime.maintenance_command(False, service),
        KIND,
        turn_off,
        service=service,
    )
    return plan.finish(apply, ctx.gate)
