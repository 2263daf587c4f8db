"""The deploy gates: `pytest -m predeploy` (do not deploy if it fails) and `pytest -m postdeploy`
(roll back if it fails).

ROLLBACK-001 compares this run with the newest pre-deploy run in the reports directory, so it
runs after every other check (see _VerdictLast).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from opsbook import Finding, HostTarget, Inventory, Outcome, Severity, Thresholds, Unit, check
from opsbook.canary import run_canary, wait_ready
from opsbook.inventory import Deploy, Host
from opsbook.probes.disk import MIB, disk_usage
from opsbook.probes.release import compose_config_error, docker_compose, tree_status
from opsbook.probes.runs import predeploy_runs
from opsbook.remediation import releases as rollbacks

# git and docker compose on a large tree or a cold CLI take longer than a target's timeout.
COMMAND_TIMEOUT_S = 60
CANARY_HOP_S = 10.0
BAD = (Outcome.FAILED, Outcome.NOT_EVALUATED)
GOOD = (Outcome.PASSED, Outcome.FIXED)


@pytest.fixture(scope="session")
def deploy(inventory: Inventory) -> Deploy:
    return inventory.deploy


@pytest.mark.predeploy
@check("DEPLOY-001", Severity.HIGH)
def test_release_tree_is_clean(deploy: Deploy, finding: Finding) -> None:
    """The release's git working tree is clean.

    Risk: uncommitted or untracked files get deployed that no review saw and no tag records.
    """
    if deploy.repo is None:
        pytest.skip("deploy.repo is not set in the inventory")
    tree = tree_status(deploy.repo, timeout_s=COMMAND_TIMEOUT_S)
    if tree.changed:
        finding.attach("git status --porcelain", tree.changed[:50])
    finding.expect(
        len(tree.changed),
        "0 changed files",
        ok=not tree.changed,
        unit=Unit.COUNT,
        problem=f"repo {deploy.repo}: {len(tree.changed)} uncommitted change(s), e.g. "
        + ", ".join(tree.changed_paths[:5]),
    )


@pytest.mark.predeploy
@pytest.mark.compose
@check("DEPLOY-002", Severity.HIGH)
def test_compose_file_is_valid(deploy: Deploy, finding: Finding) -> None:
    """The compose file is valid (`docker compose config -q`).

    Risk: the deploy stops half-way on a file the engine rejects.
    """
    if deploy.compose_file is None:
        pytest.skip("deploy.compose_file is not set in the inventory")
    docker = docker_compose(timeout_s=COMMAND_TIMEOUT_S)
    if docker is None:
        pytest.skip("docker compose is not installed here: cannot validate the compose file")
    error = compose_config_error(docker, deploy.compose_file, timeout_s=COMMAND_TIMEOUT_S)
    finding.expect(
        "valid" if error is None else "invalid",
        "valid",
        ok=error is None,
        problem=f"compose file {deploy.compose_file}: {error}",
    )


@pytest.mark.predeploy
@pytest.mark.resources
@check("DEPLOY-003", Severity.HIGH)
def test_data_filesystems_have_room(
    host: HostTarget, thresholds: Thresholds, deploy: Deploy, finding: Finding
) -> None:
    """The host's data filesystems have room for the deploy.

    Risk: a deploy that fills the disk takes down the database and the queue with it.
    """
    if not host.spec.filesystems:
        pytest.skip(f"{host.label}: no filesystems listed in the inventory")
    usages = [disk_usage(host, fs, timeout_s=thresholds.timeout_s) for fs in host.spec.filesystems]
    short = [
        f"{u.path} has {u.free_mib} MiB free" for u in usages if u.free_mib < deploy.min_free_mb
    ]
    finding.expect(
        {u.path: u.free_mib for u in usages},
        f">= {deploy.min_free_mb} MiB free each",
        ok=not short,
        unit=Unit.MEBIBYTES,
        problem="; ".join(short),
    )


@pytest.mark.predeploy
@pytest.mark.resources
@pytest.mark.backup
@check("DEPLOY-004", Severity.HIGH)
def test_backup_dir_has_room(
    inventory: Inventory, thresholds: Thresholds, deploy: Deploy, finding: Finding
) -> None:
    """The backup directory has room for the pre-deploy backup.

    Risk: the backup a rollback would need cannot be written.
    """
    if inventory.backup is None:
        pytest.skip("no backup: section in the inventory")
    # `python -m opsbook backup` writes the backup where opsbook runs (pg_dump and redis-cli run
    # here), so this machine is measured, through the same probe and timeout as the hosts: a
    # hung backup mount costs the timeout, not the gate.
    runner = HostTarget("runner", Host(spec="local://"))
    where = str(inventory.backup.dir)
    usage = disk_usage(runner, where, timeout_s=thresholds.timeout_s, nearest_existing=True)
    finding.expect(
        usage.free_mib,
        f">= {deploy.min_free_mb}",
        ok=usage.free_bytes >= deploy.min_free_mb * MIB,
        unit=Unit.MEBIBYTES,
        problem=f"backup dir {where}: {usage.free_mib} MiB free on {usage.mount}",
    )


@pytest.fixture(scope="session")
def deployed_release(inventory: Inventory) -> str | None:
    """The release deployed when this run began (the sandbox's, or opsbook deploy's record)."""
    return _current_release(inventory)


def _current_release(inventory: Inventory) -> str | None:
    from opsbook import releases

    return releases.deployed_tag(inventory)


@pytest.mark.predeploy
@pytest.mark.postdeploy
@pytest.mark.health
@check("DEPLOY-005", Severity.CRITICAL)
def test_stack_ready_within_deadline(
    inventory: Inventory, deploy: Deploy, deployed_release: str | None, finding: Finding
) -> None:
    """Every service answers within the readiness deadline.

    Risk: right after a deploy a service that never comes up is an outage; one still starting
    is not, so the gate waits up to the deadline before it judges.
    """
    ready = wait_ready(inventory, deploy.readiness_deadline_s)
    if deployed_release:
        finding.attach("release", deployed_release)
    if not ready.ready:
        finding.attach("not ready", ready.not_ready)
    finding.expect(
        round(ready.waited_s, 1),
        f"ready within {deploy.readiness_deadline_s:g} s",
        ok=ready.ready,
        unit=Unit.SECONDS,
        problem=f"not ready after {ready.waited_s:.0f} s: "
        + "; ".join(f"{what}: {why}" for what, why in ready.not_ready.items()),
    )


@pytest.mark.predeploy
@pytest.mark.postdeploy
@pytest.mark.health
@pytest.mark.queue
@check("DEPLOY-006", Severity.CRITICAL)
def test_canary_message_round_trip(inventory: Inventory, deploy: Deploy, finding: Finding) -> None:
    """A canary message goes through nginx, backend, queue, worker and PostgreSQL, and back.

    Risk: every service answers /health, yet users' messages are never stored or shown.
    """
    wait_ready(inventory, deploy.readiness_deadline_s)
    result = run_canary(inventory, CANARY_HOP_S)
    finding.attach("cleanup", result.cleanup)
    finding.expect(
        result.hops_ms,
        "post, stored, processed, read",
        ok=result.failed_hop is None,
        unit=Unit.MILLISECONDS,
        problem=f"canary failed at hop '{result.failed_hop}': {result.problem} "
        f"(hops done: {result.hops_ms or 'none'})",
    )


# -- the rollback verdict ---------------------------------------------------------------------

ROLLBACK_CHECK = "ROLLBACK-001"


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
    finding: Finding,
) -> None:
    """Nothing got worse since the pre-deploy run.

    Risk: the deploy broke what worked before it; every minute on this release hurts users.
    """
    from opsbook.plugin.keys import FINDINGS
    from opsbook.plugin.reports import RUN

    config = request.config
    reports = Path(config.getoption("reports_dir") or config.rootpath / "reports")
    run = config.stash.get(RUN, None)
    predeploy = predeploy_runs(reports, excluding=run.run_id if run else None)
    if not predeploy:
        pytest.skip(f"no pre-deploy run (pytest -m predeploy) in {reports} to compare with")
    before = predeploy[-1]
    ran = [
        row for row in config.stash[FINDINGS].to_builtins()
        if row["check_id"] != ROLLBACK_CHECK and row["outcome"] != Outcome.NOT_APPLICABLE
    ]  # fmt: skip
    release_now = _current_release(inventory)
    if ran and release_now == deployed_release:
        worse = got_worse(before["findings"], ran)
        compared = f"{len(ran)} check(s) of this run"
    else:
        # Run alone (the re-check after a fix), or the release changed during this run (a
        # rollback): this run's other results describe no release now deployed.
        worse = _essentials(inventory, deploy)
        compared = f"readiness and the canary, now (release {release_now or '-'})"
    if worse:
        finding.attach("got worse", worse)
    finding.expect(
        {"pre-deploy run": before["run"].get("run_id"), "compared": compared, "worse": len(worse)},
        "nothing got worse",
        ok=not worse,
        problem=f"{len(worse)} check(s) got worse since the pre-deploy run "
        f"{before['run'].get('run_id')}: {'; '.join(worse)}: roll back "
        f"(release {release_now or '-'}; python -m opsbook remediate latest --check "
        f"{ROLLBACK_CHECK} --apply --allow=rollback)",
    )
