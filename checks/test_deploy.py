"""The deploy gates: `pytest -m predeploy` (do not deploy if it fails) and `pytest -m postdeploy`
(roll back if it fails).

ROLLBACK-001 compares this run with the newest pre-deploy run in the reports directory, so it
runs after every other check (see _VerdictLast).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from opsbook import Severity, check
from opsbook.canary import run_canary, wait_ready
from opsbook.inventory import Deploy, Inventory
from remediation import releases as rollbacks

COMMAND_TIMEOUT_S = 60
CANARY_HOP_S = 10.0
BAD = ("failed", "error")
GOOD = ("passed", "fixed")


@pytest.fixture(scope="session")
def deploy(inventory: Inventory) -> Deploy:
    return inventory.deploy


def _run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
    )


@pytest.mark.predeploy
@check("DEPLOY-001", Severity.HIGH)
def test_release_tree_is_clean(deploy: Deploy, finding) -> None:
    """The release's git working tree is clean.

    Risk: uncommitted or untracked files get deployed that no review saw and no tag records.
    """
    if deploy.repo is None:
        pytest.skip("deploy.repo is not set in the inventory")
    done = _run(["git", "-C", str(deploy.repo), "status", "--porcelain"])
    if done.returncode != 0:
        finding.observe("not a git tree", expected="clean")
        raise AssertionError(f"repo {deploy.repo}: git status failed: {done.stderr.strip()}")
    changed = [line for line in done.stdout.splitlines() if line.strip()]
    finding.observe(len(changed), expected="0 changed files")
    if changed:
        finding.attach("git status --porcelain", changed[:50])
    assert not changed, (
        f"repo {deploy.repo}: {len(changed)} uncommitted change(s), e.g. "
        f"{', '.join(line[3:] for line in changed[:5])} (expected a clean tree)"
    )


@pytest.mark.predeploy
@pytest.mark.compose
@check("DEPLOY-002", Severity.HIGH)
def test_compose_file_is_valid(deploy: Deploy, finding) -> None:
    """The compose file is valid (`docker compose config -q`).

    Risk: the deploy stops half-way on a file the engine rejects.
    """
    if deploy.compose_file is None:
        pytest.skip("deploy.compose_file is not set in the inventory")
    docker = shutil.which("docker")
    if docker is None or _run([docker, "compose", "version"]).returncode != 0:
        pytest.skip("docker compose is not installed here: cannot validate the compose file")
    done = _run([docker, "compose", "-f", str(deploy.compose_file), "config", "-q"])
    error = (done.stderr or done.stdout).strip()
    finding.observe("valid" if done.returncode == 0 else "invalid", expected="valid")
    assert done.returncode == 0, f"compose file {deploy.compose_file}: {error.splitlines()[-1:]}"


def _free_mb(path: Path) -> tuple[Path, float]:
    while not path.exists():
        path = path.parent
    stats = os.statvfs(path)
    return path, stats.f_bavail * stats.f_frsize / 1024 / 1024


@pytest.mark.predeploy
@pytest.mark.resources
@check("DEPLOY-003", Severity.HIGH)
def test_data_filesystems_have_room(
    request: pytest.FixtureRequest, host: Any, inventory: Inventory, deploy: Deploy, finding
) -> None:
    """The host's data filesystems have room for the deploy.

    Risk: a deploy that fills the disk takes down the database and the queue with it.
    """
    name = request.node.callspec.params["host"]
    free = {}
    for filesystem in inventory.hosts[name].filesystems:
        df = host.run("df -Pk -- %s", filesystem)
        lines = df.stdout.strip().splitlines()
        if df.rc != 0 or len(lines) < 2:
            raise AssertionError(f"host {name}: df {filesystem} failed: {df.stderr.strip()}")
        free[filesystem] = round(int(lines[-1].split()[3]) / 1024)
    finding.observe(free, expected=f">= {deploy.min_free_mb} MB free each")
    short = {fs: mb for fs, mb in free.items() if mb < deploy.min_free_mb}
    assert not short, f"host {name}: " + ", ".join(
        f"{fs} has {mb} MB free (min {deploy.min_free_mb} MB)" for fs, mb in short.items()
    )


@pytest.mark.predeploy
@pytest.mark.resources
@pytest.mark.backup
@check("DEPLOY-004", Severity.HIGH)
def test_backup_dir_has_room(inventory: Inventory, deploy: Deploy, finding) -> None:
    """The backup directory has room for the pre-deploy backup.

    Risk: the backup a rollback would need cannot be written.
    """
    if inventory.backup is None:
        pytest.skip("no backup: section in the inventory")
    where, free = _free_mb(inventory.backup.dir)
    finding.observe(round(free), expected=f">= {deploy.min_free_mb} MB")
    assert free >= deploy.min_free_mb, (
        f"backup dir {inventory.backup.dir}: {free:.0f} MB free on {where} "
        f"(min {deploy.min_free_mb} MB)"
    )


@pytest.fixture(scope="session")
def deployed_release(inventory: Inventory) -> str | None:
    """The release deployed when this run began (sandbox releases only)."""
    return _current_release(inventory)


def _current_release(inventory: Inventory) -> str | None:
    from opsbook import releases

    if inventory.sandbox is None:
        return None
    where = inventory.deploy.releases_dir or releases.releases_dir(inventory.sandbox.dir)
    return releases.current(where)


@pytest.mark.predeploy
@pytest.mark.postdeploy
@pytest.mark.health
@check("DEPLOY-005", Severity.CRITICAL)
def test_stack_ready_within_deadline(
    inventory: Inventory, deploy: Deploy, deployed_release: str | None, finding
) -> None:
    """Every service answers within the readiness deadline.

    Risk: right after a deploy a service that never comes up is an outage; one still starting
    is not, so the gate waits up to the deadline before it judges.
    """
    ready = wait_ready(inventory, deploy.readiness_deadline_s)
    finding.observe(
        round(ready.waited_s, 1), expected=f"ready within {deploy.readiness_deadline_s:g} s"
    )
    if deployed_release:
        finding.attach("release", deployed_release)
    if not ready.ready:
        finding.attach("not ready", ready.not_ready)
    assert ready.ready, (
        f"{inventory.name}: not ready after {ready.waited_s:.0f} s (deadline "
        f"{deploy.readiness_deadline_s:g} s): "
        + "; ".join(f"{what}: {why}" for what, why in ready.not_ready.items())
    )


@pytest.mark.predeploy
@pytest.mark.postdeploy
@pytest.mark.health
@pytest.mark.queue
@check("DEPLOY-006", Severity.CRITICAL)
def test_canary_message_round_trip(inventory: Inventory, deploy: Deploy, finding) -> None:
    """A canary message goes through nginx, backend, queue, worker and PostgreSQL, and back.

    Risk: every service answers /health, yet users' messages are never stored or shown.
    """
    wait_ready(inventory, deploy.readiness_deadline_s)
    result = run_canary(inventory, CANARY_HOP_S)
    finding.observe(result.hops_ms, expected="post, stored, processed, read (ms)")
    finding.attach("cleanup", result.cleanup)
    assert result.failed_hop is None, (
        f"{inventory.name}: canary failed at hop '{result.failed_hop}': {result.problem} "
        f"(hops done: {result.hops_ms or 'none'})"
    )


# -- the rollback verdict ---------------------------------------------------------------------

ROLLBACK_CHECK = "ROLLBACK-001"


def _is_predeploy(selection: object) -> bool:
    words = str(selection or "").replace("(", " ").replace(")", " ").split()
    return any(w == "predeploy" and (i == 0 or words[i - 1] != "not") for i, w in enumerate(words))


def _runs(reports: Path) -> list[dict[str, Any]]:
    found = []
    if not reports.is_dir():
        return found
    for folder in reports.iterdir():
        if folder.name.startswith(".") or folder.is_symlink() or not folder.is_dir():
            continue
        try:
            found.append(json.loads((folder / "findings.json").read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return sorted(found, key=lambda document: str(document["run"].get("started", "")))


def _key(row: dict[str, Any]) -> str:
    return f"{row['check_id']}[{row['target']}]" if row["target"] else str(row["check_id"])


def got_worse(before: list[dict[str, Any]], now: list[dict[str, Any]]) -> list[str]:
    """Checks that passed in `before` and fail (or could not be evaluated) `now`."""
    earlier = {_key(r): r for r in before if r["check_id"] != ROLLBACK_CHECK}
    worse = []
    for row in now:
        old = earlier.get(_key(row))
        if row["check_id"] == ROLLBACK_CHECK or old is None:
            continue
        if old["outcome"] in GOOD and row["outcome"] in BAD:
            message = " ".join(str(row.get("message") or "").split())[:160]
            worse.append(f"{_key(row)} ({old['outcome']} -> {row['outcome']}: {message})")
    return worse


class _VerdictLast:
    """Moves ROLLBACK-001 after every other selected check: its verdict reads their outcomes."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        from opsbook.plugin.keys import CHECK

        last = [
            i for i in items if CHECK in i.stash and i.stash[CHECK].spec.check_id == ROLLBACK_CHECK
        ]
        if last:
            items[:] = [i for i in items if i not in last] + last


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # A test module's hooks do not see the whole collection; a plugin registered here does.
    manager = metafunc.config.pluginmanager
    if metafunc.function.__name__ == "test_nothing_got_worse" and not manager.has_plugin(
        "opsbook-rollback-verdict"
    ):
        manager.register(_VerdictLast(), "opsbook-rollback-verdict")


def _essentials(inventory: Inventory, deploy: Deploy) -> list[str]:
    """Readiness and the canary, judged now (when this run's other results cannot be used)."""
    ready = wait_ready(inventory, deploy.readiness_deadline_s)
    if not ready.ready:
        return [f"not ready: {what}: {why}" for what, why in ready.not_ready.items()]
    canary = run_canary(inventory, CANARY_HOP_S)
    return (
        [f"canary failed at '{canary.failed_hop}': {canary.problem}"] if canary.failed_hop else []
    )


@pytest.mark.postdeploy
@check("ROLLBACK-001", Severity.CRITICAL, remediation=rollbacks.rollback_release)
def test_nothing_got_worse(
    request: pytest.FixtureRequest,
    inventory: Inventory,
    deploy: Deploy,
    deployed_release: str | None,
    finding,
) -> None:
    """Nothing got worse since the pre-deploy run.

    Risk: the deploy broke what worked before it; every minute on this release hurts users.
    """
    from opsbook.plugin.findings import rows
    from opsbook.plugin.reports import RUN

    config = request.config
    reports = Path(config.getoption("reports_dir") or config.rootpath / "reports")
    run = config.stash.get(RUN, None)
    this_run = run.run_id if run else None
    predeploy = [
        d for d in _runs(reports) if _is_predeploy(d["run"].get("selection"))
        and d["run"].get("run_id") != this_run
    ]  # fmt: skip
    if not predeploy:
        pytest.skip(f"no pre-deploy run (pytest -m predeploy) in {reports} to compare with")
    before = predeploy[-1]
    ran = [r for r in rows(config) if r["check_id"] != ROLLBACK_CHECK and r["outcome"] != "skipped"]
    release_now = _current_release(inventory)
    if ran and release_now == deployed_release:
        worse = got_worse(before["findings"], ran)
        compared = f"{len(ran)} check(s) of this run"
    else:
        # Run alone (the re-check after a fix), or the release changed during this run (a
        # rollback): this run's other results describe no release now deployed.
        worse = _essentials(inventory, deploy)
        compared = f"readiness and the canary, now (release {release_now or '-'})"
    finding.observe(
        {"pre-deploy run": before["run"].get("run_id"), "compared": compared, "worse": len(worse)},
        expected="nothing got worse",
    )
    if worse:
        finding.attach("got worse", worse)
    assert not worse, (
        f"{inventory.name}: {len(worse)} check(s) got worse since the pre-deploy run "
        f"{before['run'].get('run_id')}: {'; '.join(worse)}: roll back "
        f"(release {release_now or '-'}; python -m opsbook remediate latest --check "
        f"{ROLLBACK_CHECK} --apply --allow=rollback)"
    )
