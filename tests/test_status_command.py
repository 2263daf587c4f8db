"""`python -m opsbook status`: the dashboard of the last real run, healthy and broken, and its
Nagios exit codes: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import redis
from support import RunChecks
from test_findings_schema import validator

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
    run = run_checks("-m", DASHBOARD_CHECKS, reports=reports)
    assert run.exit_code == 0
    # The real checks' findings.json follows the shipped schema (every kind of observed value).
    validator().validate(run.document)
    code, out, _ = dashboard(reports, capsys)
    assert code == 0
    assert out.startswith("opsbook status: OK - sandbox, run ")
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
    resources = section(out, "RESOURCE USE")
    # Values with their units, limits too; no Python reprs.
    assert any(
        re.fullmatch(r"  disk used +\S+ +[\d.]+ % \(expected <= 80 %\)", line) for line in resources
    ), resources
    assert any(
        re.fullmatch(r"  redis memory +queue +[\d.]+ % \(expected < \d+ % of maxmemory\)", line)
        for line in resources
    ), resources
    assert any(line.startswith("  db connections    chatdb ") for line in resources)
    assert "None" not in out
    assert "{" not in out
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
    run = run_checks("-m", DASHBOARD_CHECKS, "--remediate=plan", reports=reports)
    breakable_sandbox.start("backend")
    assert run.exit_code == 1
    # Failures and their fixes' plans (remediation_attempt) follow the shipped schema too.
    validator().validate(run.document)
    assert run.row("HEALTH-001", "backend")["remediation_attempt"]["status"] == "planned"
    code, out, _ = dashboard(reports, capsys)
    assert code == 2, "HEALTH-001 is critical: CRITICAL"
    assert out.startswith("opsbook status: CRITICAL - sandbox, run ")
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
    assert (
        "      opsbook.remediation.services.restart_service (add --apply to carry out the plan)"
        in (actions)
    )


def test_a_medium_failure_is_a_warning(
    sandbox: Stack,
    run_checks: RunChecks,
    admin_redis: redis.Redis,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """QUEUE-004 (medium) fails on really dead letters: WARNING, exit 1."""
    reports = tmp_path / "reports"
    dead = [f"opsbook-status-test-{n}" for n in range(11)]
    admin_redis.lpush("dead_letter_queue", *dead)
    try:
        run = run_checks("--check=QUEUE-004", reports=reports)
    finally:
        for payload in dead:
            admin_redis.lrem("dead_letter_queue", 1, payload)
    assert run.outcome("QUEUE-004") == "failed", run.output
    code, out, _ = dashboard(reports, capsys)
    assert code == 1
    assert out.startswith("opsbook status: WARNING - sandbox, run ")
    activity = section(out, "RECENT ACTIVITY")
    assert any(
        re.fullmatch(r"  dead letters +queue +\d+ \(expected <= 10\)  <- FAILED", line)
        for line in activity
    ), activity


def test_no_run_is_unknown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = dashboard(tmp_path, capsys)
    assert code == 3
    reason = f"no finished run under {tmp_path} (no {tmp_path}/latest/findings.json)"
    # Monitoring reads stdout's first line; a person reads stderr.
    assert out == f"opsbook status: UNKNOWN - {reason}\n"
    assert err == f"status: {reason}\n"


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
    (line,) = [line for line in out.splitlines() if "missing table(s) agents in chatdb" in line]
    assert line.endswith("?]0;owned??[2J")


def test_a_blocked_check_is_listed_right_under_its_cause(
    breakable_sandbox: Stack,
    run_checks: RunChecks,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Redis stopped: the first of the recent errors is Redis's own failure (QUEUE-001,
    critical), and right under it the backend's health check it blocks, before the checks of
    Redis that could not be evaluated."""
    reports = tmp_path / "reports"
    breakable_sandbox.stop("redis")
    run = run_checks("-m", DASHBOARD_CHECKS, reports=reports)
    assert run.outcome("HEALTH-001", "backend") == "blocked", run.output
    code, out, _ = dashboard(reports, capsys)
    assert code == 2
    errors = section(out, "RECENT ERRORS")
    assert errors[0].startswith("  [CRITICAL] QUEUE-001 queue: redis queue: "), errors
    assert errors[1] == "  blocked by redis (fix it first):", errors
    under = [line for line in errors[2:] if line.startswith("    ")]
    assert errors[2 : 2 + len(under)] == under, errors
    health = "    [CRITICAL] HEALTH-001 backend: blocked by redis: "
    assert any(line.startswith(health) for line in under), under
    assert all(": blocked by redis: " in line for line in under), under
    assert any(line.startswith("  [HIGH] QUEUE-") for line in errors[2 + len(under) :]), errors
