"""The cause first, on the real sandbox (docs/remediation.md#the-cause-first).

A dependency that is down (Redis, PostgreSQL) blocks its dependents' failures: the backend's
health check is BLOCKED by it, named as the cause in findings.json, the terminal and `opsbook
status`, and the backend's own fix is not run (its process is the same after the run). With
`--remediate=apply` the dependency's fix runs first, and what it blocked is checked again and
passes. Under pytest-xdist the controlling process applies the fixes.

Each test gives the deployment a state directory of its own (an inventory that differs from the
sandbox's only in `state_dir`): the restart budgets that other tests spend on the same sandbox
must not brake these fixes.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from support import CheckRun, RunChecks
from test_findings_schema import validator
from test_status_command import dashboard, section

from opsbook.sandbox.stack import Stack

pytestmark = pytest.mark.sandbox

# Outcomes of a healthy stack.
GREEN = {"passed", "fixed", "skipped"}


def own_state(sandbox: Stack, tmp_path: Path) -> Path:
    """The sandbox's inventory with a state directory (lock, budgets, audit log) of the test's."""
    raw = yaml.safe_load(sandbox.inventory_path.read_text(encoding="utf-8"))
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump({**raw, "state_dir": str(tmp_path / "state")}))
    return inventory


def left_broken(run: CheckRun) -> dict[tuple[str, str | None], str]:
    """The checks of the stack's services that are not green. The host's checks are left out:
    LOG-001 still sees the outage's error lines in its window, and RES-003 sees the load of
    whatever else this machine runs."""
    return {
        key: outcome
        for key, outcome in run.outcomes().items()
        if outcome not in GREEN and key[1] != "local"
    }


def fix_lines(run: CheckRun) -> list[str]:
    return [line for line in run.output.splitlines() if line.startswith("opsbook fix: ")]


def test_redis_down_blocks_the_backend_and_is_named_as_the_cause(
    breakable_sandbox: Stack,
    run_checks: RunChecks,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reports = tmp_path / "reports"
    inventory = own_state(breakable_sandbox, tmp_path)
    breakable_sandbox.stop("redis")
    run = run_checks("--remediate=plan", reports=reports, inventory=inventory)
    assert run.exit_code == 1, run.output
    validator().validate(run.document)
    health = run.row("HEALTH-001", "backend")
    assert health["outcome"] == "blocked", run.output
    assert health["blocked_by"] == "redis"
    assert health["message"].startswith("blocked by redis: backend: GET /health answered 503")
    # Not remediated, not even planned: the cause's fix comes first.
    assert health["remediation_attempt"] is None
    ping = run.row("QUEUE-001", "queue")
    assert ping["outcome"] == "failed"
    assert ping["blocked_by"] is None
    assert ping["remediation_attempt"]["status"] == "planned"
    blocked = sorted(k for k, v in run.outcomes().items() if v == "blocked")
    assert blocked == [("HEALTH-001", "backend")], run.output
    assert run.document["run"]["counts"]["blocked"] == 1
    # The terminal: pytest's counts line, and the cause with what it blocks under it.
    assert re.search(r"\b1 blocked\b", run.output.splitlines()[-1]), run.output
    lines = run.output.splitlines()
    cause = next(i for i, line in enumerate(lines) if line.startswith("redis is down: "))
    assert lines[cause].startswith("redis is down: QUEUE-001 queue: redis queue: "), lines[cause]
    assert lines[cause + 1].startswith("  HEALTH-001 backend: blocked by redis: "), lines
    # `opsbook status`: grouped under the cause; no quick action for what it blocks, nor for
    # checks of Redis that could not be evaluated.
    code, out, _ = dashboard(reports, capsys)
    assert code == 2
    errors = section(out, "RECENT ERRORS")
    header = errors.index("  blocked by redis (fix it first):")
    assert errors[header + 1].startswith("    [CRITICAL] HEALTH-001 backend: blocked by redis: ")
    assert any(line.startswith("  [CRITICAL] QUEUE-001 queue: ") for line in errors[:header])
    actions = "\n".join(section(out, "QUICK ACTIONS"))
    assert "--check QUEUE-001 --target queue" in actions
    assert "--check HEALTH-001" not in actions
    assert "--check QUEUE-004" not in actions, "QUEUE-004 could not be evaluated"


def test_a_blocked_check_is_not_remediated_even_when_allowed(
    breakable_sandbox: Stack, run_checks: RunChecks, tmp_path: Path
) -> None:
    """Redis is known to be down from a check that cannot reach it (QUEUE-003); the backend's
    restart is allowed, and not run."""
    backend = breakable_sandbox.component("backend").pid()
    breakable_sandbox.stop("redis")
    run = run_checks(
        "--check=HEALTH-001,QUEUE-003", "--remediate=apply", "--allow=restart",
        inventory=own_state(breakable_sandbox, tmp_path),
    )  # fmt: skip
    assert breakable_sandbox.component("backend").pid() == backend
    health = run.row("HEALTH-001", "backend")
    assert (health["outcome"], health["blocked_by"]) == ("blocked", "redis"), run.output
    assert health["remediation_attempt"] is None
    assert run.outcome("QUEUE-003", "queue") == "error"
    assert run.row("QUEUE-003", "queue")["remediation_attempt"] is None
    assert fix_lines(run) == []
    # Nothing failed: some checks could not be evaluated or were blocked.
    assert run.exit_code == 10, run.output


@pytest.mark.parametrize(
    ("component", "check_id", "target"),
    [("redis", "QUEUE-001", "queue"), ("postgres", "DB-001", "chatdb")],
)
def test_the_cause_is_fixed_first_and_its_dependents_pass(
    breakable_sandbox: Stack,
    run_checks: RunChecks,
    tmp_path: Path,
    component: str,
    check_id: str,
    target: str,
) -> None:
    backend = breakable_sandbox.component("backend").pid()
    inventory = own_state(breakable_sandbox, tmp_path)
    breakable_sandbox.stop(component)
    run = run_checks("--remediate=apply", "--allow=restart", inventory=inventory)
    assert breakable_sandbox.component(component).is_running()
    # The backend was never restarted: only the cause was.
    assert breakable_sandbox.component("backend").pid() == backend
    cause = run.row(check_id, target)
    assert cause["outcome"] == "fixed", run.output
    assert cause["remediation_attempt"]["verdict"] == "FIXED"
    # One line for the one fix applied, although the run is quiet (-q).
    assert len(fix_lines(run)) == 1, run.output
    assert re.fullmatch(
        rf"opsbook fix: {check_id} {target}: restart_service FIXED in \d+\.\d s", fix_lines(run)[0]
    ), fix_lines(run)
    assert run.outcome("HEALTH-001", "backend") == "passed"
    assert left_broken(run) == {}, run.output


def test_under_xdist_the_controller_applies_the_fix_and_rechecks(
    breakable_sandbox: Stack, run_checks: RunChecks, tmp_path: Path
) -> None:
    """With -n 2 the workers only run checks; the controller fixes PostgreSQL, then runs again
    what failed or could not be evaluated because of it (the backend's health among them)."""
    backend = breakable_sandbox.component("backend").pid()
    inventory = own_state(breakable_sandbox, tmp_path)
    breakable_sandbox.stop("postgres")
    run = run_checks("-n", "2", "--remediate=apply", "--allow=restart", inventory=inventory)
    assert breakable_sandbox.component("postgres").is_running()
    assert breakable_sandbox.component("backend").pid() == backend
    cause = run.row("DB-001", "chatdb")
    assert cause["outcome"] == "fixed", run.output
    assert [line.split(" in ")[0] for line in fix_lines(run)] == [
        "opsbook fix: DB-001 chatdb: restart_service FIXED"
    ], run.output
    assert "opsbook re-check: DB-002 chatdb: PASSED" in run.output
    assert left_broken(run) == {}, run.output
    # The counts line agrees with findings.json (a fixed check is passed in pytest's words).
    counts = run.document["run"]["counts"]
    passed = counts.get("passed", 0) + counts.get("fixed", 0)
    assert re.search(rf"\b{passed} passed\b", run.output.splitlines()[-1]), run.output
    assert "error" not in run.output.splitlines()[-1]


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_redis_is_fixed_before_the_backend_when_both_are_down(
    breakable_sandbox: Stack, run_checks: RunChecks, tmp_path: Path, workers: list[str]
) -> None:
    """Redis and the backend both stopped: Redis's fix runs first; the backend, checked again
    once Redis answers, still fails on its own and gets its own fix; Prometheus's view of the
    backend is not fixed on its own (it is blocked by the backend, then passes)."""
    inventory = own_state(breakable_sandbox, tmp_path)
    breakable_sandbox.stop("redis")
    breakable_sandbox.stop("backend")
    run = run_checks(*workers, "--remediate=apply", "--allow=restart", inventory=inventory)
    assert [line.split(" in ")[0] for line in fix_lines(run)] == [
        "opsbook fix: QUEUE-001 queue: restart_service FIXED",
        "opsbook fix: HEALTH-001 backend: restart_service FIXED",
    ], run.output
    assert run.outcome("QUEUE-001", "queue") == "fixed"
    assert run.outcome("HEALTH-001", "backend") == "fixed"
    for check_id in ("HEALTH-002", "HEALTH-003"):
        assert run.outcome(check_id, "backend") == "passed", run.output
    assert run.outcome("OBS-002", "prometheus") == "passed", run.output
    assert run.row("OBS-002", "prometheus")["remediation_attempt"] is None
