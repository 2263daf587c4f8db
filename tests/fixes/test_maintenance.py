"""Maintenance mode, switched by a person with `python -m opsbook maintenance on|off`: the
frontend answers 503 everywhere, /health included, and then serves the site again.

The command is run in-process through its own register()/run(), as opsbook.cli wires it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import requests
import yaml
from support import RunChecks

from opsbook.commands import maintenance as command
from opsbook.inventory import load_inventory
from opsbook.remediate.context import Context
from opsbook.remediation.maintenance import MaintenanceUnsupported, maintenance_on
from opsbook.sandbox.stack import Stack

pytestmark = pytest.mark.sandbox


def opsbook_maintenance(*args: str) -> int:
    parser = argparse.ArgumentParser(prog="python -m opsbook")
    command.register(parser.add_subparsers(dest="command", required=True))
    parsed = parser.parse_args(["maintenance", *args])
    return int(parsed.run(parsed))


def frontend_health(stack: Stack) -> int:
    url = f"http://127.0.0.1:{stack.state.ports['nginx']}/health"
    return requests.get(url, timeout=3).status_code


def test_maintenance_on_and_off(
    breakable_sandbox: Stack,
    run_checks: RunChecks,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stack = breakable_sandbox
    flag = stack.dir / "nginx" / "maintenance.on"
    where = ["--inventory", str(stack.inventory_path), "--reports-dir", str(tmp_path)]
    # The deployment's state of this test alone (as run_checks gives it).
    monkeypatch.setenv("OPSBOOK__STATE_DIR", str(tmp_path / "state"))

    assert opsbook_maintenance("on", *where) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        "maintenance on: plan",
        f"  [maintenance-mode] turn maintenance mode on (503 everywhere): touch {flag}",
        "maintenance on: opsbook.remediation.maintenance.maintenance_on: applied",
        f"  [maintenance-mode] turn maintenance mode on (503 everywhere): touch {flag}"
        " -> frontend /health answers 503; frontend-tls /health answers 503",
    ]
    assert frontend_health(stack) == 503
    run = run_checks("--check=HEALTH-001")
    # A maintenance window is not an outage: the frontend's checks are not applicable, and
    # the report says why.
    assert run.outcome("HEALTH-001", "frontend") == "skipped"
    assert run.row("HEALTH-001", "frontend")["message"] == (
        "maintenance mode is on: frontend serves its maintenance page"
    )
    assert run.outcome("HEALTH-001", "backend") == "passed"

    assert opsbook_maintenance("on", *where) == 0
    # Both of nginx's entries (plain and TLS) serve it.
    assert (
        capsys.readouterr()
        .out.splitlines()[1]
        .startswith("  nothing to do: maintenance mode is already on (frontend, frontend-tls serve")
    )

    assert opsbook_maintenance("off", *where) == 0
    assert (
        capsys.readouterr()
        .out.splitlines()[-1]
        .endswith(f"rm -f {flag} -> frontend /health answers 200; frontend-tls /health answers 200")
    )
    assert frontend_health(stack) == 200
    assert run_checks("--check=HEALTH-001").exit_code == 0

    assert opsbook_maintenance("off", *where) == 0
    assert capsys.readouterr().out.splitlines()[1] == (
        "  nothing to do: maintenance mode is already off (no frontend serves the page)"
    )
    # Read from the entry itself: a page switched on by hand is seen, and switched off.
    flag.touch()
    flag.chmod(0o644)
    assert opsbook_maintenance("on", *where) == 0
    assert "already on (frontend, frontend-tls serve" in capsys.readouterr().out
    assert opsbook_maintenance("off", *where) == 0
    capsys.readouterr()
    assert frontend_health(stack) == 200
    # Both switches are in the deployment's audit log (intent and outcome), as applied
    # remediations are.
    log = (tmp_path / "state" / "audit.log").read_text()
    events = [json.loads(line)["event"] for line in log.splitlines()]
    assert events == ["intent", "outcome", "intent", "outcome", "intent", "outcome"]


def test_plan_changes_nothing(sandbox: Stack) -> None:
    ctx = Context(load_inventory(sandbox.inventory_path, environ={}), "maintenance", "http",
                  "frontend")  # fmt: skip
    plan = maintenance_on(ctx, apply=False)
    assert not plan.applied
    assert plan.steps[0].result is None
    assert not (sandbox.dir / "nginx" / "maintenance.on").exists()
    assert frontend_health(sandbox) == 200


def test_other_runtimes_are_refused_clearly(
    sandbox: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A frontend no runtime drives (here: no sandbox, no compose, no runtime of its own) is
    refused in one line; so are systemd and command services whose inventory entry names no
    maintenance_flag or maintenance commands (tests/test_runtimes.py)."""
    raw = yaml.safe_load(sandbox.inventory_path.read_text())
    del raw["sandbox"]
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump(raw))

    assert opsbook_maintenance("on", "--inventory", str(inventory)) == 2
    assert capsys.readouterr().err == (
        "maintenance: no runtime drives nginx (name one under services: in the inventory)\n"
    )
    ctx = Context(load_inventory(inventory, environ={}), "maintenance", "http", "frontend")
    with pytest.raises(MaintenanceUnsupported):
        maintenance_on(ctx, apply=False)
    assert frontend_health(sandbox) == 200
