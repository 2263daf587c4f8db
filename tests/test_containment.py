"""`python -m opsbook incident contain|release` on the native sandbox: nginx, the public entry,
stopped through the sandbox's runtime (its port then refuses connections), and started again
(/health 200); both audited, both refused without `--allow=contain`.

Compose and systemd: tests/test_runtimes.py (`test_containment_on_a_compose_stack...`,
`test_containment_on_a_systemd_unit...`). The command runs in-process through its own
register()/run(), as opsbook.cli wires it.
"""

from __future__ import annotations

import argparse
import json
import socket
from pathlib import Path

import pytest
import requests
from support import RunChecks

from opsbook.commands import incident, status
from opsbook.inventory import load_inventory
from opsbook.remediate.context import Context
from opsbook.remediate.runner import Remediator
from opsbook.remediation.services import restart_service
from opsbook.sandbox.stack import Stack

pytestmark = pytest.mark.sandbox


def opsbook_incident(*args: str) -> int:
    parser = argparse.ArgumentParser(prog="python -m opsbook")
    incident.register(parser.add_subparsers(dest="command", required=True))
    parsed = parser.parse_args(["incident", *args])
    return int(parsed.run(parsed))


def connection_refused(port: int) -> bool:
    """A TCP connection to 127.0.0.1:PORT is refused (what a user outside would meet)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3):
            return False
    except ConnectionRefusedError:
        return True


def test_contain_closes_the_entry_and_release_opens_it(
    breakable_sandbox: Stack,
    run_checks: RunChecks,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stack = breakable_sandbox
    port = stack.state.ports["nginx"]
    health = f"http://127.0.0.1:{port}/health"
    where = ["--inventory", str(stack.inventory_path), "--reports-dir", str(tmp_path)]
    state = tmp_path / "state"  # the deployment's state of this test alone (as run_checks')
    monkeypatch.setenv("OPSBOOK__STATE_DIR", str(state))
    stop = f"python -m opsbook sandbox stop nginx --dir {stack.dir}"
    start = f"python -m opsbook sandbox start nginx --dir {stack.dir}"

    # Not allowed: one line, exit 3, nothing stopped; the refusal is audited all the same.
    assert opsbook_incident("contain", *where) == 3
    out, err = capsys.readouterr()
    assert err == (
        "incident contain: refused: not allowed: contain "
        "(allow with --allow=contain or remediation.allow)\n"
    )
    assert out.splitlines() == [
        "incident contain: plan",
        f"  [contain] stop nginx, the public entry (every user is cut off): {stop}",
    ]
    assert requests.get(health, timeout=3).status_code == 200

    assert opsbook_incident("contain", "--allow=contain", "--reason", "leak suspected", *where) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[2] == "incident contain: opsbook.remediation.containment.contain_entry: applied"
    assert printed[3].startswith(
        f"  [contain] stop nginx, the public entry (every user is cut off): {stop} -> "
        f"127.0.0.1:{port}: "
    ), printed
    # nginx serves both public entries, the plain one and the TLS one: both are closed.
    tls_port = stack.state.ports["nginx-tls"]
    assert connection_refused(port)
    assert connection_refused(tls_port)
    record = json.loads((state / "contained.json").read_text())
    assert (record["services"], record["entries"], record["reason"]) == (
        ["nginx"], [f"127.0.0.1:{port}", f"127.0.0.1:{tls_port}"], "leak suspected"
    )  # fmt: skip

    # A contained entry is not an outage: the frontend's checks are not applicable, and say
    # who closed it; the backend's still run. No fix restarts nginx.
    run = run_checks("--check=HEALTH-001", "--check=HEALTH-005")
    message = f"contained by opsbook at {record['time']} by {record['user']}: leak suspected"
    assert run.outcome("HEALTH-001", "frontend") == "skipped", run.output
    assert run.row("HEALTH-001", "frontend")["message"] == message
    assert run.outcome("HEALTH-005", "nginx") == "skipped", run.output
    assert run.outcome("HEALTH-001", "backend") == "passed"
    assert run.exit_code == 0, run.output
    # `opsbook status` says the entry is closed on purpose, and by whom.
    parser = argparse.ArgumentParser(prog="python -m opsbook")
    status.register(parser.add_subparsers(dest="command", required=True))
    parsed = parser.parse_args(["status", "--reports-dir", str(tmp_path / "reports-0")])
    assert parsed.run(parsed) == 0
    shown = capsys.readouterr().out.splitlines()
    assert f"  http       frontend     CONTAINED   HEALTH-001: {message}" in shown, shown
    # A fix asked for anyway (here HEALTH-001's, allowed to restart) is refused by the gate.
    inventory = load_inventory(stack.inventory_path)
    ctx = Context(inventory, "HEALTH-001", "http", "frontend")
    remediator = Remediator(inventory, tmp_path, "test", frozenset({"restart"}))
    attempt = remediator.apply_one(restart_service, ctx, apply=True, redact=str)
    assert (attempt.status, attempt.reason) == (
        "refused", f"nginx is {message}; `opsbook incident release` opens it again"
    )  # fmt: skip
    assert connection_refused(port)

    assert opsbook_incident("contain", "--allow=contain", *where) == 0
    assert (
        capsys.readouterr()
        .out.splitlines()[1]
        .startswith(f"  nothing to do: already contained by opsbook at {record['time']}")
    )

    assert opsbook_incident("release", *where) == 3  # release is a contain step too
    assert connection_refused(port)
    capsys.readouterr()
    assert opsbook_incident("release", "--allow=contain", *where) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"  [contain] start nginx, the public entry, again: {start} -> frontend /health answers "
        "200; frontend-tls /health answers 200"
    )
    assert requests.get(health, timeout=3).status_code == 200
    assert not (state / "contained.json").exists()
    assert opsbook_incident("release", "--allow=contain", *where) == 0
    assert capsys.readouterr().out.splitlines()[1] == (
        "  nothing to do: not contained: the public entry answers"
    )

    # In the deployment's audit log: the refusals (an outcome, no intent), then each switch's
    # intent and outcome.
    entries = [json.loads(line) for line in (state / "audit.log").read_text().splitlines()]
    assert [(e["event"], e.get("status")) for e in entries] == [
        ("outcome", "refused"),
        ("intent", None),
        ("outcome", "applied"),
        ("intent", None),
        ("outcome", "refused"),
        ("outcome", "refused"),
        ("intent", None),
        ("outcome", "applied"),
    ]
    assert {e["remediation"] for e in entries} == {
        "opsbook.remediation.containment.contain_entry",
        "opsbook.remediation.containment.release_entry",
        "opsbook.remediation.services.restart_service",
    }
    assert {e["target"] for e in entries} == {"http/frontend"}


def test_an_inventory_without_a_public_entry_is_one_line(
    sandbox: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    raw = yaml.safe_load(sandbox.inventory_path.read_text())
    raw["http"] = {k: v for k, v in raw["http"].items() if v["kind"] != "frontend"}
    raw["services"]["nginx"]["targets"] = []
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump(raw))
    assert opsbook_incident("contain", "--allow=contain", "--inventory", str(inventory)) == 2
    assert capsys.readouterr().err == (
        "incident contain: the inventory has no public entry (an http target of kind frontend)\n"
    )
    assert opsbook_incident("contain", "--allow=nonsense", "--inventory", str(inventory)) == 2
    assert capsys.readouterr().err.startswith("incident contain: --allow: no such kind of step")


def test_an_entry_that_still_answers_is_exit_1_and_a_held_lock_exit_3(
    breakable_sandbox: Stack,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Done but not verified: an inventory that says the worker serves the frontend (wrongly:
    nginx does) has the worker stopped, and the entry still takes connections: exit 1, saying
    so. Another run holding the remediation lock: refused, exit 3, nothing stopped."""
    import yaml

    from opsbook.remediate.lock import RemediationLock

    stack = breakable_sandbox
    raw = yaml.safe_load(stack.inventory_path.read_text())
    raw["services"]["nginx"]["targets"] = []
    raw["services"]["worker"]["targets"] = ["frontend"]
    del raw["http"]["frontend-tls"]  # nginx's other entry: only `frontend` is misattributed
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump(raw))
    state = tmp_path / "state"
    monkeypatch.setenv("OPSBOOK__STATE_DIR", str(state))
    monkeypatch.setenv("OPSBOOK__REMEDIATION__VERIFY_TIMEOUT_S", "1")
    where = ["--allow=contain", "--inventory", str(inventory), "--reports-dir", str(tmp_path)]
    port = stack.state.ports["nginx"]

    state.mkdir(mode=0o750)
    lock = RemediationLock(state / "remediation.lock")
    assert lock.acquire("run by a person")
    try:
        assert opsbook_incident("contain", *where) == 3
    finally:
        lock.release()
    err = capsys.readouterr().err
    assert err.startswith("incident contain: refused: another run holds the remediation lock")
    assert err.count("\n") == 1
    assert stack.component("worker").is_running()

    assert opsbook_incident("contain", *where) == 1
    out = capsys.readouterr().out
    assert "opsbook.remediation.containment.contain_entry: failed" in out
    assert f"127.0.0.1:{port} still accepts connections after 1 s (expected no connection)" in out
    assert not stack.component("worker").is_running()
    assert opsbook_incident("release", *where) == 0
    assert stack.component("worker").is_running()
    assert requests.get(f"http://127.0.0.1:{port}/health", timeout=3).status_code == 200
