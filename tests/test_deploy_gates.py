"""The deploy gates on a real sandbox: a clean predeploy run, a broken release caught by the
postdeploy gate with a rollback verdict, and the rollback bringing the previous release back.

The broken release is a real copy of the backend whose database connection points nowhere:
/health answers 503 and no message can be posted, as after a deploy with a bad configuration.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from support import RunChecks
from test_backup import backup_command, backup_inventory

from opsbook import releases
from opsbook.remediate.plan import RISKY
from opsbook.sandbox.stack import Stack

pytestmark = pytest.mark.sandbox

NOWHERE = 'psycopg.connect("host=127.0.0.1 port=1 connect_timeout=1")'


def _broken_backend(tmp_path: Path) -> Path:
    source = Path(releases.__file__).parent / "reference" / "backend.py"
    code = source.read_text()
    broken = code.replace('self.config.connect_db("backend-health")', NOWHERE).replace(
        'self.config.connect_db("backend")', NOWHERE
    )
    assert broken.count(NOWHERE) == 3
    path = tmp_path / "backend.py"
    path.write_text(broken)
    return path


@pytest.mark.breaks("HEALTH-001", "DEPLOY-005", "DEPLOY-006", "ROLLBACK-001")
def test_broken_deploy_is_caught_and_rolled_back(
    fresh_sandbox: Stack, tmp_path: Path, run_checks: RunChecks
) -> None:
    stack = fresh_sandbox
    where = releases.releases_dir(stack.dir)
    inventory = backup_inventory(stack, stack.dir / "backups")
    reports = tmp_path / "reports"
    fast = {"OPSBOOK__DEPLOY__READINESS_DEADLINE_S": "3"}
    releases.create(where, "v1")
    releases.deploy(stack, where, "v1")
    assert backup_command("--inventory", str(inventory)).returncode == 0

    before = run_checks("-m", "predeploy", inventory=inventory, reports=reports)
    assert before.exit_code == 0, before.output
    assert before.outcome("DEPLOY-006") == "passed"

    releases.create(where, "v2", _broken_backend(tmp_path))
    releases.deploy(stack, where, "v2")
    after = run_checks("-m", "postdeploy", inventory=inventory, reports=reports, env=fast)
    assert after.exit_code == 1, after.output
    assert after.outcome("HEALTH-001", "backend") == "failed"
    assert after.outcome("DEPLOY-005") == "failed"
    canary = after.row("DEPLOY-006")
    assert canary["outcome"] == "failed"
    assert "canary failed at hop 'post': POST /api/messages answered 503" in canary["message"]
    verdict = after.row("ROLLBACK-001")
    assert verdict["outcome"] == "failed", after.output
    assert "got worse since the pre-deploy run" in verdict["message"]
    assert "DEPLOY-005 (passed -> failed" in verdict["message"]
    assert "DEPLOY-006 (passed -> failed" in verdict["message"]
    assert ": roll back (release v2;" in verdict["message"]

    fix = run_checks(
        "-m", "postdeploy", "--check=ROLLBACK-001", "--remediate=apply", "--allow=rollback",
        inventory=inventory, reports=reports, env=fast,
    )  # fmt: skip
    attempt = fix.row("ROLLBACK-001")["remediation_attempt"]
    if "rollback" not in RISKY:
        # Until "rollback" is a risky kind, the remediation refuses to act, allowed or not.
        assert attempt["status"] == "refused", fix.output
        assert "not registered as risky" in attempt["reason"]
        assert releases.current(where) == "v2"
        assert releases.rollback(stack, where) == ("v2", "v1")
    else:
        assert attempt["status"] == "applied", fix.output
        assert attempt["verdict"] == "FIXED", fix.output
    assert releases.current(where) == "v1"
    assert releases.history(where) == ["v1"]

    back = run_checks("-m", "postdeploy", inventory=inventory, reports=reports)
    assert back.exit_code == 0, back.output
    assert back.outcome("ROLLBACK-001") == "passed"
    assert back.outcome("DEPLOY-006") == "passed"


@pytest.mark.breaks("DEPLOY-001")
def test_dirty_release_tree_fails_the_predeploy_gate(
    sandbox: Stack, tmp_path: Path, run_checks: RunChecks
) -> None:
    repo = tmp_path / "release"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "app.py").write_text("print('v1')\n")
    env = {"OPSBOOK__DEPLOY__REPO": str(repo)}
    dirty = run_checks("--check=DEPLOY-001", "-m", "predeploy", env=env)
    row = dirty.row("DEPLOY-001")
    assert row["outcome"] == "failed", dirty.output
    assert row["message"] == (
        f"repo {repo}: 1 uncommitted change(s), e.g. app.py (expected a clean tree)"
    )
    subprocess.run([*git, "add", "app.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "v1"], check=True)
    clean = run_checks("--check=DEPLOY-001", "-m", "predeploy", env=env)
    assert clean.outcome("DEPLOY-001") == "passed", clean.output
