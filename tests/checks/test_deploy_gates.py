"""The deploy gates on a real sandbox: a clean predeploy run, a broken release caught by the
postdeploy gate with a rollback verdict, and the rollback bringing the previous release back.

The broken release is a real copy of the backend whose database connection points nowhere:
/health answers 503 and no message can be posted, as after a deploy with a bad configuration.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from importlib import resources
from pathlib import Path

import pytest
import requests
import yaml
from support import RunChecks, eventually, fill
from test_backup import backup_command, backup_inventory

from opsbook import releases
from opsbook.loopback import free_port
from opsbook.remediate.plan import RISKY
from opsbook.sandbox.stack import Stack

pytestmark = pytest.mark.sandbox

REPO = Path(__file__).resolve().parents[2]

NOWHERE = 'psycopg.connect("host=127.0.0.1 port=1 connect_timeout=1")'


def _broken_backend(tmp_path: Path) -> Path:
    code = resources.files("chatapp").joinpath("backend.py").read_text()
    broken = code.replace('self.config.connect_db("backend-health")', NOWHERE).replace(
        'self.config.connect_db("backend")', NOWHERE
    )
    assert broken.count(NOWHERE) == 3
    path = tmp_path / "backend.py"
    path.write_text(broken)
    return path


@pytest.mark.breaks("HEALTH-001", "DEPLOY-005", "DEPLOY-006", "ROLLBACK-001")
@pytest.mark.fixes("ROLLBACK-001")
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


@pytest.mark.breaks("DEPLOY-005")
def test_a_proxy_answering_502_on_its_api_path_is_not_ready(
    fresh_sandbox: Stack, run_checks: RunChecks
) -> None:
    """nginx's /api/ sent to a port where nothing listens: every /health still answers 200
    (nginx answers its own), PostgreSQL and Redis answer, and DEPLOY-005 says the entry does
    not pass the API on. A proxy that still holds a replaced backend's address looks the same
    right after a deploy. A sandbox of its own: nginx's upstream errors stay in its log."""
    stack = fresh_sandbox
    config = stack.dir / "nginx" / "nginx.conf"
    healthy = config.read_text()
    fast = {"OPSBOOK__DEPLOY__READINESS_DEADLINE_S": "2"}

    def reload_nginx() -> None:
        pid = stack.component("nginx").pid()
        assert pid is not None
        os.kill(pid, signal.SIGHUP)

    ready = run_checks("--check=DEPLOY-005", inventory=stack.inventory_path, env=fast)
    assert ready.outcome("DEPLOY-005") == "passed", ready.output
    upstream = f"127.0.0.1:{stack.state.ports['backend']};"
    assert upstream in healthy
    config.write_text(healthy.replace(upstream, f"127.0.0.1:{free_port()};"))
    reload_nginx()
    probe = f"http://127.0.0.1:{stack.state.ports['nginx']}/api/messages/opsbook-route-probe"
    eventually(lambda: requests.get(probe, timeout=5).status_code == 502, "nginx answers 502")
    run = run_checks("--check=DEPLOY-005", inventory=stack.inventory_path, env=fast)
    row = run.row("DEPLOY-005")
    assert row["outcome"] == "failed", run.output
    assert row["message"].startswith("sandbox: not ready after "), row["message"]
    assert (
        "s: http frontend passing the API on: GET /api/messages/opsbook-route-probe 502; "
        in row["message"]
    ), row["message"]
    assert "http frontend:" not in row["message"], row["message"]  # its own /health answers


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
        f"sandbox: repo {repo}: 1 uncommitted change(s), e.g. app.py (expected 0 changed files)"
    )
    assert (row["observed"], row["unit"]) == (1, "count")
    assert row["evidence"]["git status --porcelain"] == '[\n "?? app.py"\n]'

    subprocess.run([*git, "add", "app.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "v1"], check=True)
    clean = run_checks("--check=DEPLOY-001", "-m", "predeploy", env=env)
    assert clean.outcome("DEPLOY-001") == "passed", clean.output


def _docker_compose_missing() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return "docker is not installed (scripts/setup-container-engine installs it)"
    version = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, timeout=30, check=False
    )
    return None if version.returncode == 0 else f"no docker compose: {version.stderr.strip()}"


@pytest.mark.breaks("DEPLOY-002")
def test_broken_compose_file_fails_the_predeploy_gate(
    sandbox: Stack, tmp_path: Path, run_checks: RunChecks
) -> None:
    missing = _docker_compose_missing()
    if missing:
        pytest.skip(missing)
    compose_file = tmp_path / "compose.yaml"
    shipped = (REPO / "compose.yaml").read_text()
    compose_file.write_text(shipped)
    env = {"OPSBOOK__DEPLOY__COMPOSE_FILE": str(compose_file)}
    valid = run_checks("--check=DEPLOY-002", "-m", "predeploy", env=env)
    assert valid.outcome("DEPLOY-002") == "passed", valid.output
    assert valid.row("DEPLOY-002")["observed"] == "valid"

    # The release's backend now waits on a service the file does not define (a renamed one).
    typo = shipped.replace("depends_on: [postgres, redis]", "depends_on: [postgres, queue]")
    assert typo != shipped
    compose_file.write_text(typo)
    broken = run_checks("--check=DEPLOY-002", "-m", "predeploy", env=env)
    row = broken.row("DEPLOY-002")
    assert (row["outcome"], row["observed"]) == ("failed", "invalid"), broken.output
    assert f"compose file {compose_file}: " in row["message"], row["message"]
    assert 'service "backend" depends on undefined service "queue"' in row["message"]

    compose_file.write_text(shipped)
    fixed = run_checks("--check=DEPLOY-002", "-m", "predeploy", env=env)
    assert fixed.outcome("DEPLOY-002") == "passed", fixed.output


@pytest.mark.breaks("DEPLOY-003", "DEPLOY-004")
def test_full_data_filesystem_fails_the_room_gates(
    sandbox: Stack, tmp_path: Path, small_filesystem: Path, run_checks: RunChecks
) -> None:
    """The host's data filesystem, which holds the backup dir, is really filled: a 2 MiB tmpfs.
    The minimum free space is lowered to 1 MB to fit it; the filling is what breaks it."""
    backups = small_filesystem / "backups"
    backups.mkdir()
    raw = yaml.safe_load(sandbox.inventory_path.read_text())
    raw["hosts"]["local"]["filesystems"] = [str(small_filesystem)]
    raw["backup"]["dir"] = str(backups)
    raw["deploy"]["min_free_mb"] = 1
    inventory = tmp_path / "inventory.yaml"  # beside the tmpfs, not on it
    inventory.write_text(yaml.safe_dump(raw))
    gates = ("--check=DEPLOY-003,DEPLOY-004", "-m", "predeploy")

    room = run_checks(*gates, inventory=inventory)
    assert room.exit_code == 0, room.output
    assert room.outcome("DEPLOY-003", "local") == "passed"
    assert room.outcome("DEPLOY-004") == "passed"

    fill(small_filesystem)
    full = run_checks(*gates, inventory=inventory)
    assert full.exit_code == 1, full.output
    row = full.row("DEPLOY-003", "local")
    assert row["outcome"] == "failed", full.output
    assert f"host local: {small_filesystem} has 0 MiB free" in row["message"], row["message"]
    row = full.row("DEPLOY-004")
    assert row["outcome"] == "failed", full.output
    assert f"backup dir {backups}: 0 MiB free" in row["message"], row["message"]

    (small_filesystem / "filler").unlink()
    again = run_checks(*gates, inventory=inventory)
    assert again.exit_code == 0, again.output
