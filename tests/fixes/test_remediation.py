"""Remediation under the rules, on the real sandbox: plan, apply, verify, allow-list, budgets,
the lock, the audit log, and the `remediate` command. The backend is the broken service: it is
stopped (a real outage), and restart_service is HEALTH-001's linked fix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from support import CheckRun, RunChecks, fill

from opsbook.remediate.lock import RemediationLock
from opsbook.remediate.runner import LOCK
from opsbook.sandbox.stack import Stack

pytestmark = pytest.mark.sandbox

REPO = Path(__file__).resolve().parents[2]
HEALTH = ("--check=HEALTH-001",)


def opsbook(*args: str, state: Path | None = None) -> subprocess.CompletedProcess[str]:
    """A command, against the deployment state `state` (run_checks: tmp_path / "state")."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSBOOK_")}
    if state is not None:
        env["OPSBOOK__STATE_DIR"] = str(state)
    return subprocess.run(
        [sys.executable, "-m", "opsbook", *args], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def audit_entries(state: Path) -> list[dict]:
    """The deployment's audit log (in its state directory, not in the reports)."""
    log = state / "audit.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def attempt(run: CheckRun) -> dict:
    return run.row("HEALTH-001", "backend").get("remediation_attempt") or {}


def test_plan_shows_the_fix_and_changes_nothing(
    breakable_sandbox: Stack, run_checks: RunChecks
) -> None:
    breakable_sandbox.stop("backend")
    run = run_checks(*HEALTH, "--remediate=plan")
    assert run.exit_code == 1
    planned = attempt(run)
    assert planned["status"] == "planned"
    assert planned["plan"][0].startswith("[restart] restart backend: python -m opsbook sandbox")
    assert "recreate backend (only if backend is still unhealthy)" in planned["plan"][1]
    assert not breakable_sandbox.component("backend").is_running()
    assert "opsbook remediation" in run.output or "planned" in run.output


def test_risky_fix_needs_the_allow_list(
    breakable_sandbox: Stack, run_checks: RunChecks, tmp_path: Path
) -> None:
    breakable_sandbox.stop("backend")
    run = run_checks(*HEALTH, "--remediate=apply", reports=tmp_path)
    assert run.exit_code == 1
    refused = attempt(run)
    assert refused["status"] == "refused"
    assert (
        refused["reason"]
        == "not allowed: restart (allow with --allow=restart or remediation.allow)"
    )
    assert not breakable_sandbox.component("backend").is_running()


@pytest.mark.breaks("HEALTH-001")
@pytest.mark.fixes("HEALTH-001")
def test_apply_restarts_verifies_and_audits(
    breakable_sandbox: Stack, run_checks: RunChecks, tmp_path: Path
) -> None:
    breakable_sandbox.stop("backend")
    run = run_checks(*HEALTH, "--remediate=apply", "--allow=restart", reports=tmp_path)
    assert run.exit_code == 0, run.output
    row = run.row("HEALTH-001", "backend")
    assert row["outcome"] == "fixed"
    assert row["message"] == "backend: GET /health: Connection refused"
    fixed = row["remediation_attempt"]
    assert (fixed["status"], fixed["verdict"], fixed["after"]) == ("applied", "FIXED", "passed")
    assert fixed["before"] == "backend: GET /health: Connection refused"
    assert fixed["plan"][0].endswith("-> healthy")
    assert fixed["plan"][1].endswith("-> not needed")
    assert breakable_sandbox.component("backend").is_running()
    # Written ahead: the intent before the restart, the outcome after it.
    intent, outcome = audit_entries(tmp_path / "state")
    assert (intent["event"], outcome["event"], outcome["intent"]) == ("intent", "outcome", 1)
    assert (outcome["check"], outcome["target"], outcome["verdict"]) == (
        "HEALTH-001",
        "http/backend",
        "FIXED",
    )
    verified = opsbook(
        "audit-log", "verify", f"--inventory={breakable_sandbox.inventory_path}",
        f"--reports-dir={tmp_path}", state=tmp_path / "state",
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr
    # Applied again on the healthy service: the check passes and nothing is done.
    again = run_checks(*HEALTH, "--remediate=apply", "--allow=restart", reports=tmp_path)
    assert again.outcome("HEALTH-001", "backend") == "passed"
    assert len(audit_entries(tmp_path / "state")) == 2


def test_fix_is_idempotent_when_called_directly(sandbox: Stack) -> None:
    from opsbook.inventory import load_inventory
    from opsbook.remediate.context import Context
    from opsbook.remediation.services import restart_service

    inventory = load_inventory(sandbox.inventory_path, environ={})
    ctx = Context(inventory, "HEALTH-001", "http", "backend")
    plan = restart_service(ctx, apply=True)
    assert plan.nothing_to_do == "backend answers now"
    assert not plan.applied


def test_budget_brakes_until_a_person_resets_it(
    breakable_sandbox: Stack, run_checks: RunChecks, tmp_path: Path
) -> None:
    one_restart = {"OPSBOOK__REMEDIATION__BUDGETS__RESTART": "{count: 1, per_s: 3600}"}
    apply = (*HEALTH, "--remediate=apply", "--allow=restart")
    breakable_sandbox.stop("backend")
    assert attempt(run_checks(*apply, env=one_restart, reports=tmp_path))["verdict"] == "FIXED"
    breakable_sandbox.stop("backend")
    refused = attempt(run_checks(*apply, env=one_restart, reports=tmp_path))
    assert refused["status"] == "refused"
    assert refused["reason"].startswith("budget spent: 1 restart(s) of backend")
    # Braked: refused again although nothing was spent, until a person resets it.
    braked = attempt(run_checks(*apply, env=one_restart, reports=tmp_path))
    assert "is braked since its budget ran out" in braked["reason"]
    reset = opsbook(
        "remediate", "--reset-budget", "restart:backend",
        f"--inventory={breakable_sandbox.inventory_path}", state=tmp_path / "state",
    )  # fmt: skip
    assert reset.stdout.strip() == "reset: restart:backend", reset.stderr
    assert attempt(run_checks(*apply, env=one_restart, reports=tmp_path))["verdict"] == "FIXED"


def test_a_second_run_does_not_remediate_while_one_holds_the_lock(
    breakable_sandbox: Stack, run_checks: RunChecks, tmp_path: Path
) -> None:
    breakable_sandbox.stop("backend")
    # The deployment's lock (run_checks: its state in tmp_path / "state"), whichever reports.
    lock = RemediationLock(tmp_path / "state" / LOCK)
    assert lock.acquire("run held-by-test")
    try:
        run = run_checks(*HEALTH, "--remediate=apply", "--allow=restart")
    finally:
        lock.release()
    skipped = attempt(run)
    assert skipped["status"] == "skipped"
    assert skipped["reason"].startswith("another run holds the remediation lock (run held-by-test")
    assert not breakable_sandbox.component("backend").is_running()


def test_a_full_disk_applies_nothing_and_says_why(
    breakable_sandbox: Stack, run_checks: RunChecks, small_filesystem: Path
) -> None:
    """Nothing is applied where its audit trail cannot be written (the deployment's state
    directory on a full filesystem)."""
    breakable_sandbox.stop("backend")
    state = small_filesystem / "state"
    fill(small_filesystem)
    run = run_checks(
        *HEALTH, "--remediate=apply", "--allow=restart", env={"OPSBOOK__STATE_DIR": str(state)}
    )
    assert run.exit_code == 1, run.output
    expected = f"skipped - cannot take the remediation lock in {state}: No space left on device"
    assert expected in run.output
    assert "Traceback" not in run.output
    assert not breakable_sandbox.component("backend").is_running()


@pytest.fixture
def read_only_audit_log(tmp_path: Path) -> Iterator[Path]:
    """The deployment's audit log (run_checks: in tmp_path / "state") on a read-only bind
    mount: it reads, but takes no entry. Yields the state directory."""
    state = tmp_path / "state"
    state.mkdir()
    log = state / "audit.log"
    log.touch()
    subprocess.run(["mount", "--bind", str(log), str(log)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(log)], check=True)
        yield state
    finally:
        subprocess.run(["umount", str(log)], check=True)


# Written ahead: a fix whose intent the audit log cannot take is not applied at all (until
# issue 15 it was applied and reported as missing from the log, exit 11).
NO_INTENT = "not applied: the audit log cannot take its intent: Read-only file system"


def test_a_fix_the_audit_log_cannot_hold_is_not_applied(
    breakable_sandbox: Stack, run_checks: RunChecks, read_only_audit_log: Path
) -> None:
    breakable_sandbox.stop("backend")
    run = run_checks(*HEALTH, "--remediate=apply", "--allow=restart")
    skipped = attempt(run)
    assert (skipped["status"], skipped["reason"]) == ("skipped", NO_INTENT), run.output
    assert run.exit_code == 1  # the check still fails; the trail has no gap
    assert not breakable_sandbox.component("backend").is_running()
    log = read_only_audit_log / "audit.log"
    assert log.read_text() == ""
    # The same through the remediate command, on a finished run's failure.
    reports = read_only_audit_log.parent / "reports-0"
    applied = opsbook(
        "remediate", "latest", "--check=HEALTH-001", "--target=backend", "--apply",
        "--allow=restart", f"--reports-dir={reports}", state=read_only_audit_log,
    )  # fmt: skip
    assert applied.returncode == 3, applied.stdout + applied.stderr
    assert f"skipped - {NO_INTENT}" in applied.stdout
    assert not breakable_sandbox.component("backend").is_running()
    assert log.read_text() == ""


def test_maintenance_command_says_what_the_audit_log_cannot_hold(
    breakable_sandbox: Stack, read_only_audit_log: Path
) -> None:
    log = read_only_audit_log / "audit.log"
    where = ("--inventory", str(breakable_sandbox.inventory_path))
    on = opsbook("maintenance", "on", *where, state=read_only_audit_log)
    assert on.returncode == 3, on.stdout + on.stderr
    assert on.stderr == f"maintenance on: refused: {NO_INTENT}\n"
    assert not (breakable_sandbox.dir / "nginx" / "maintenance.on").exists()
    assert log.read_text() == ""
    # The lock it took for the switch is released again.
    lock = RemediationLock(read_only_audit_log / LOCK)
    assert lock.acquire("test")
    lock.release()


def test_backup_restore_says_what_the_audit_log_cannot_hold(
    breakable_sandbox: Stack, read_only_audit_log: Path, tmp_path: Path
) -> None:
    from test_backup import backup_command, backup_inventory

    inventory = backup_inventory(breakable_sandbox, tmp_path / "backups")
    raw = yaml.safe_load(inventory.read_text())
    inventory.write_text(yaml.safe_dump({**raw, "state_dir": str(read_only_audit_log)}))
    assert backup_command("--inventory", str(inventory)).returncode == 0
    restored = backup_command(
        "restore", "latest", "--inventory", str(inventory), "--apply", "--allow=restore",
    )  # fmt: skip
    log = read_only_audit_log / "audit.log"
    assert restored.returncode == 3, restored.stdout + restored.stderr
    assert (
        f"restore latest: opsbook.remediation.backup.restore_backup: skipped - {NO_INTENT}"
        in restored.stdout
    )
    assert log.read_text() == ""


def test_unknown_allow_kind_is_a_usage_error_of_every_command(
    sandbox: Stack, tmp_path: Path
) -> None:
    from test_backup import backup_inventory

    remediate = opsbook("remediate", "latest", "--check=HEALTH-001", "--allow=restat")
    assert remediate.returncode == 2
    assert remediate.stderr.startswith("remediate: --allow: no such kind of step: restat (")
    inventory = backup_inventory(sandbox, tmp_path / "backups")
    restore = opsbook(
        "backup", "restore", "latest", f"--inventory={inventory}", "--allow=restat", "--apply"
    )
    assert restore.returncode == 2
    assert restore.stderr.startswith("backup: --allow: no such kind of step: restat (")


def test_two_concurrent_runs_remediate_once(
    breakable_sandbox: Stack, run_checks: RunChecks, tmp_path: Path
) -> None:
    breakable_sandbox.stop("backend")
    runs: list[CheckRun] = []

    def one() -> None:
        runs.append(run_checks(*HEALTH, "--remediate=apply", "--allow=restart", reports=tmp_path))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(attempt(run).get("status", "passed") for run in runs)
    assert statuses.count("applied") == 1, statuses
    outcomes = [e for e in audit_entries(tmp_path / "state") if e["event"] == "outcome"]
    assert [entry["status"] for entry in outcomes] == ["applied"]


def test_audit_log_tampering_is_detected(
    breakable_sandbox: Stack, run_checks: RunChecks, tmp_path: Path
) -> None:
    for _ in range(2):
        breakable_sandbox.stop("backend")
        run_checks(*HEALTH, "--remediate=apply", "--allow=restart", reports=tmp_path)
    state = tmp_path / "state"
    log = state / "audit.log"
    original = log.read_text()
    assert len(original.splitlines()) == 4  # intent and outcome of each

    def verify(reports: Path = tmp_path) -> subprocess.CompletedProcess[str]:
        where = f"--inventory={breakable_sandbox.inventory_path}"
        return opsbook("audit-log", "verify", where, f"--reports-dir={reports}", state=state)

    log.write_text(original.replace('"verdict": "FIXED"', '"verdict": "NOT FIXED"', 1))
    edited = verify()
    assert edited.returncode == 1
    assert "line 2: its MAC does not match its content" in edited.stderr
    log.write_text("".join(original.splitlines(keepends=True)[:2]))
    deleted = verify()
    assert deleted.returncode == 1
    assert "2 newest entr(y/ies) deleted (the newest run's record says 4" in deleted.stderr
    mistyped = verify(Path(f"{tmp_path}-typo"))
    assert mistyped.returncode == 2  # not "intact (0 entries)"
    assert mistyped.stderr == f"audit-log verify: no reports folder at {tmp_path}-typo\n"


def test_remediate_command_fixes_a_finished_runs_failure(
    breakable_sandbox: Stack, run_checks: RunChecks, tmp_path: Path
) -> None:
    breakable_sandbox.stop("backend")
    run_checks(*HEALTH, reports=tmp_path)
    base = ("remediate", "latest", "--check=HEALTH-001", "--target=backend")
    where = f"--reports-dir={tmp_path}"
    planned = opsbook(*base, where)
    assert planned.returncode == 0, planned.stderr
    assert "restart_service: planned" in planned.stdout
    assert not breakable_sandbox.component("backend").is_running()
    applied = opsbook(*base, where, "--apply", "--allow=restart")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "applied - FIXED" in applied.stdout
    again = opsbook(*base, where, "--apply", "--allow=restart")
    assert "nothing-to-do - backend answers now" in again.stdout
    unknown = opsbook("remediate", "latest", "--check=NOPE-001", where)
    assert unknown.returncode == 2
    assert (
        unknown.stderr.strip()
        == f"remediate: check NOPE-001 did not run in {(tmp_path / 'latest').resolve().name}"
    )
