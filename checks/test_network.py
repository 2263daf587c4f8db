"""Egress: the destinations outside the stack that the chat needs (opt-in, `egress:`)."""

from __future__ import annotations

import pytest

from opsbook import Finding, Inventory, Severity, Thresholds, check
from opsbook.plugin.keys import INVENTORY
from opsbook.probes.network import reach

pytestmark = [pytest.mark.daily, pytest.mark.network]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # One test per inventory entry, named after it: the destinations are the operator's
    # (a model provider's API, say), never written here.
    if "egress" not in metafunc.fixturenames:
        return
    inventory = metafunc.config.stash.get(INVENTORY, None)
    names = sorted(inventory.egress) if inventory is not None else []
    if names:
        metafunc.parametrize("egress", names, ids=names)
        return
    # The same skip as a target kind the inventory does not have (fixtures/targets.py).
    skip = pytest.mark.skip(reason="no egress in the inventory (NET-001 is opt-in)")
    metafunc.parametrize("egress", [pytest.param(None, marks=skip)], ids=["none"])


@check("NET-001", Severity.HIGH)
def test_egress_destination_is_reachable(
    egress: str, inventory: Inventory, thresholds: Thresholds, finding: Finding
) -> None:
    """An egress destination answers from the checking host.

    Risk: the chat cannot reach what it depends on outside the stack (the model provider's API,
    say): every answer fails although every service inside the stack is healthy.
    """
    url = inventory.egress[egress].url
    timeout = thresholds.timeout_s
    # Any HTTP answer, a 404 or a 401 included, proves the path works: the check is about the
    # network (DNS, firewall, proxy, TLS), not about the remote service or our credentials.
    kind = "a TCP connection" if url.startswith("tcp://") else "an HTTP answer"
    reached = reach(url, timeout_s=timeout)
    finding.expect(
        reached.answer,
        f"{kind} within {timeout:g}s",
        ok=reached.answered,
        problem=f"{reached.what}: {reached.reason}",
    )
