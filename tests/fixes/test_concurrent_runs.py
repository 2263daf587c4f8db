"""Two runs against one deployment, each with its own reports folder, on the real sandbox:
the deployment's lock lets exactly one of them restart the stopped backend.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from support import CheckRun, RunChecks

from opsbook.sandbox.stack import Stack

pytestmark = pytest.mark.sandbox

RESTART = "opsbook.remediation.services.restart_service"


def test_two_runs_with_their_own_reports_restart_the_backend_once(
    breakable_sandbox: Stack, run_checks: RunChecks, tmp_path: Path
) -> None:
    breakable_sandbox.stop("backend")
    runs: dict[str, CheckRun] = {}

    def one(name: str) -> None:
        runs[name] = run_checks(
            "--check=HEALTH-001", "--remediate=apply", "--allow=restart",
            reports=tmp_path / f"reports-{name}",
        )  # fmt: skip

    threads = [threading.Thread(target=one, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    attempts = {
        name: run.row("HEALTH-001", "backend").get("remediation_attempt") or {}
        for name, run in runs.items()
    }
    statuses = sorted(attempt.get("status", "none") for attempt in attempts.values())
    # One restarts; the other finds the lock held (skipped), or runs after it and finds the
    # backend answering (passed, no attempt), or plans after it with nothing to do.
    assert statuses.count("applied") == 1, (statuses, [run.output for run in runs.values()])
    assert set(statuses) <= {"applied", "skipped", "none", "nothing-to-do"}, statuses
    # Both runs wrote to the deployment's one audit log (run_checks: tmp_path / "state"),
    # whatever their reports folders: one intent, one outcome.
    log = tmp_path / "state" / "audit.log"
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["event"], e["remediation"]) for e in entries] == [
        ("intent", RESTART),
        ("outcome", RESTART),
    ]
    assert entries[1]["verdict"] == "FIXED"
    assert breakable_sandbox.component("backend").is_running()
    for name in ("a", "b"):
        assert not (tmp_path / f"reports-{name}" / "audit.log").exists()
