"""Every process of the stack runs, traffic or not: the sysadmin's process check."""

from __future__ import annotations

import pytest

from opsbook import Finding, Inventory, Severity, check
from opsbook.remediate.runtime import RuntimeCommandFailed, Unsupported, runtime_of
from opsbook.remediation import services

pytestmark = [pytest.mark.daily, pytest.mark.health]


@check("HEALTH-005", Severity.HIGH, remediation=services.restart_service)
def test_every_service_of_the_stack_runs(
    stack_service: str, inventory: Inventory, finding: Finding
) -> None:
    """A service that serves no target runs, as its runtime sees it, even when idle.

    Risk: a dead consumer goes unnoticed while no traffic flows (the queue checks need
    messages to see it), and the first messages after a quiet night wait for nobody.
    """
    served = inventory.services[stack_service].targets
    if served:
        # Its targets' readiness checks (HEALTH-001, DB-001, QUEUE-001, OBS-001) watch it, and
        # their fixes restart it: this check is for what serves nothing they reach.
        pytest.skip(
            f"{stack_service} serves {', '.join(served)} in the inventory: "
            "their readiness checks watch it"
        )
    runtime = runtime_of(inventory, stack_service)
    if runtime is None:
        pytest.skip(f"no runtime drives {stack_service} (name one under services:)")
    if runtime.name == "compose":
        pytest.skip("the inventory runs it under compose: COMPOSE-001 checks its containers")
    try:
        running = runtime.is_running(stack_service)
    except RuntimeCommandFailed as exc:
        finding.not_evaluated(str(exc))
    try:
        # The command that said so, where it ran: the unit or process an operator looks at.
        asked = f"{runtime.name} runtime: {runtime.command('status', stack_service)}"
    except Unsupported:
        asked = f"{runtime.name} runtime"
    finding.expect(
        "running" if running else "not running", "running", ok=running,
        problem=f"not running ({asked})",
    )  # fmt: skip
