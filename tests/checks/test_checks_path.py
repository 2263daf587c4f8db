"""The end-to-end path: the daily checks pass on the healthy sandbox and fail when it breaks."""

from __future__ import annotations

import pytest
from support import RunChecks

from opsbook.sandbox.stack import Stack

pytestmark = pytest.mark.sandbox


def test_daily_run_passes_on_the_healthy_sandbox(
    fresh_sandbox: Stack, run_checks: RunChecks
) -> None:
    run = run_checks(inventory=fresh_sandbox.inventory_path)
    assert run.exit_code == 0, run.output
    # Only what the sandbox's inventory does not have is skipped: opt-in egress, Grafana, the
    # compose project, and (until the sandbox takes backups) the backup checks; and what
    # native processes cannot have (COMPOSE-005/008's container limits).
    for row in run.rows:
        if row["outcome"] == "skipped":
            assert "inventory" in row["message"] or row["message"].startswith(
                "the native sandbox enforces no CPU or memory limits"
            ), row
    assert set(run.outcomes().values()) <= {"passed", "skipped"}, run.outcomes()


@pytest.mark.breaks("HEALTH-001")
def test_stopped_backend_fails_its_health_check(
    breakable_sandbox: Stack, run_checks: RunChecks
) -> None:
    breakable_sandbox.stop("backend")
    run = run_checks("--check=HEALTH-001")
    assert run.exit_code == 1
    row = run.row("HEALTH-001", "backend")
    assert row["outcome"] == "failed"
    assert row["message"].startswith("backend: GET /health: ")
    assert run.outcome("HEALTH-001", "frontend") == "passed"
