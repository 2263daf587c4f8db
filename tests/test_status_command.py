"""`python -m opsbook status`: the dashboard of the last real run, healthy and broken."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from support import RunChecks

from opsbook.commands import status
from opsbook.sandbox.stack import Stack

pytestmark = pytest.mark.sandbox

# Everything the dashboard shows, without the log check (a stopped backend logs nothing new,
# but other tests' breakage may still be in LOG-001's window).
DASHBOARD_CHECKS = "daily and not logs"


def dashboard(reports: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the command as the CLI would: parsed by the parser that register() sets up."""
    parser = argparse.ArgumentParser(prog="python -m opsbook")
    status.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["status", "--reports-dir", str(reports)])
    code = args.run(args)
    out, err = capsys.readouterr()
    return code, out, err


def section(text: str, title: str) -> list[str]:
    lines = text.split(f"\n{title}\n", 1)[1].split("\n\n", 1)[0]
    return lines.splitlines()


def test_healthy_dashboard(
    sandbox: Stack, run_checks: RunChecks, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reports = tmp_path / "reports"
    assert run_checks("-m", DASHBOARD_CHECKS, reports=reports).exit_code == 0
    code, out, _ = dashboard(reports, capsys)
    assert code == 0
    assert out.startswith("opsbook status: sandbox, run ")
    services = section(out, "SERVICE STATUS")
    for kind, target, check_id in (
        ("http", "backend", "HEALTH-001"),
        ("http", "frontend", "HEALTH-001"),
        ("postgres", "chatdb", "DB-001"),
        ("redis", "queue", "QUEUE-001"),
        ("prometheus", "prometheus", "OBS-001"),
    ):
        assert any(line.split()[:4] == [kind, target, "UP", f"{check_id}:"] for line in services), (
            services
        )
    assert not any("grafana" in line for line in services)  # not in the sandbox's inventory
    resources = "\n".join(section(out, "RESOURCE USE"))
    assert "disk used" in resources
    assert "(expected <= 80%)" in resources
    assert "db connections    chatdb" in resources
    activity = "\n".join(section(out, "RECENT ACTIVITY"))
    assert "queue depth       queue        0 (expected <= 1000)" in activity
    assert "dead letters      queue        0 (expected <= 10)" in activity
    assert section(out, "RECENT ERRORS") == ["  (none)"]
    assert section(out, "QUICK ACTIONS") == ["  (none)"]


def test_broken_backend_dashboard(
    breakable_sandbox: Stack,
    run_checks: RunChecks,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reports = tmp_path / "reports"
    breakable_sandbox.stop("backend")
    run = run_checks("-m", DASHBOARD_CHECKS, reports=reports)
    breakable_sandbox.start("backend")
    assert run.exit_code == 1
    code, out, _ = dashboard(reports, capsys)
    assert code == 0
    backend = next(line for line in section(out, "SERVICE STATUS") if " backend " in line)
    assert backend.split()[:4] == ["http", "backend", "DOWN", "HEALTH-001:"]
    assert "backend: GET /health: " in backend
    errors = section(out, "RECENT ERRORS")
    assert any(
        line.startswith("  [CRITICAL] HEALTH-001 backend: backend: GET /health: ")
        for line in errors
    ), errors
    actions = section(out, "QUICK ACTIONS")
    assert (
        f"  python -m opsbook remediate latest --check HEALTH-001 --target backend "
        f"--reports-dir {reports}"
    ) in actions
    assert "      remediation.services.restart_service (add --apply to carry out the plan)" in (
        actions
    )


def test_no_run_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = dashboard(tmp_path, capsys)
    assert code == 2
    assert out == ""
    assert err == f"status: no finished run under {tmp_path} (no {tmp_path}/latest/findings.json)\n"


def test_target_text_cannot_drive_the_terminal(
    sandbox: Stack, run_checks: RunChecks, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A finding's message can carry what a target answered; escape sequences are not sent to
    the terminal. The run is real; its message is then edited as an attacker's answer would
    read."""
    reports = tmp_path / "reports"
    sandbox.component("postgres").psql(
        "ALTER TABLE agents RENAME TO agents_renamed", database="chatdb"
    )
    try:
        run_checks("--check=DB-004", reports=reports)
    finally:
        sandbox.component("postgres").psql(
            "ALTER TABLE agents_renamed RENAME TO agents", database="chatdb"
        )
    findings = reports / "latest" / "findings.json"
    document = json.loads(findings.read_text())
    document["findings"][0]["message"] += "\x1b]0;owned\x07\x1b[2J"
    findings.write_text(json.dumps(document))
    _, out, _ = dashboard(reports, capsys)
    assert "\x1b" not in out
    assert "\x07" not in out
    assert "missing table(s) agents in chatdb?]0;owned??[2J" in out
