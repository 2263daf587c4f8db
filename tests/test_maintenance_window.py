"""`opsbook maintenance run`: a cleanup on a real compose stack removes exactly what belongs to
the deployment and is past retention (its stopped container, release tags neither current nor
previous, rotated logs and backups past retention) and nothing else (the current and previous
releases, another repository's image, another project's container, fresh logs, the newest
backup), with the maintenance page on around it and the post-checks green; an upgrade to a
good release inside the window (the page on after the deploy's backup, off after its switch),
and to a bad one (rolled back by the deploy, the page off again, exit 4);
on the native sandbox, logs and backups past retention only; the plans of patch and upgrade;
the lock held by another run; bad usage.

The engine's test (marker `containers`) has a stack of its own for the module, from a copy of
compose.yaml whose application image has a name of its own (`localhost/opsbook-mwtest-app`),
so that its release tags never touch the shipped `localhost/opsbook-app:dev`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
import yaml
from test_compose_deploy import BREAK
from test_compose_stack import _engine_problem

from opsbook.compose import COMPOSE_FILE, default_docker_host
from opsbook.inventory import Inventory, load_inventory
from opsbook.releases import DeployedRelease, deployed, now_iso, record
from opsbook.remediate.audit import AuditLog
from opsbook.remediate.lock import RemediationLock
from opsbook.remediate.runner import state_dir
from opsbook.sandbox.compose import ComposeStack
from opsbook.sandbox.stack import Stack

REPO = Path(__file__).resolve().parents[1]
SHIPPED_APP = "localhost/opsbook-app:dev"
APP = "localhost/opsbook-mwtest-app"
OTHER = "localhost/opsbook-mwtest-other:x"
# deploy.registry of the cleanup's inventory, never reached: a release pulled from it keeps the
# registry's name beside the compose file's (opsbook.deploy.pulled_repository).
REGISTRY = "registry.invalid:5000/chat"
PULLED = f"{REGISTRY}/{APP.rsplit('/', 1)[-1]}"
OLD_S = 40 * 86400


def _env(docker_host: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPSBOOK_", "PYTEST_"))}
    if docker_host:
        env["DOCKER_HOST"] = docker_host
    env["DOCKER_BUILDKIT"] = "0"
    return env


def docker(stack: ComposeStack, *args: str, check: bool = True) -> str:
    done = subprocess.run(
        ["docker", *args], env=_env(stack.docker_host), capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0 or not check, f"docker {' '.join(args)}: {done.stderr}"
    return done.stdout


def opsbook(docker_host: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "opsbook", *args], cwd=REPO, env=_env(docker_host),
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip


def _old(path: Path, age_s: float = OLD_S) -> Path:
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def _logs(folder: Path) -> dict[str, Path]:
    """A live log, its rotated copies (two old, one fresh), and an old file that is no log."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "live": folder / "app.log",
        "old1": folder / "app.log.1",
        "old2": folder / "app.log.2.gz",
        "fresh": folder / "app.log.3",
        "notes": folder / "notes.txt",
    }
    for path in files.values():
        path.write_text("line\n")
    for key in ("old1", "old2", "notes"):
        _old(files[key])
    return files


def _old_backup(inventory_path: Path, docker_host: str | None, backups: Path) -> Path:
    """A real backup, aged: copied under a stamp 40 days old, its manifest saying so."""
    done = opsbook(docker_host, "backup", f"--inventory={inventory_path}")
    assert done.returncode == 0, done.stdout + done.stderr
    newest = sorted(backups.glob("opsbook-backup-*"))[-1]
    then = datetime.now(UTC) - timedelta(seconds=OLD_S)
    name = f"opsbook-backup-{then:%Y%m%dT%H%M%SZ}"
    old = backups / name
    shutil.copytree(newest, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest.update(name=name, started=then.isoformat(), finished=then.isoformat())
    (old / "manifest.json").write_text(json.dumps(manifest))
    # The nightly backup BACKUP-001 of the pre-checks looks for: the newest, kept.
    done = opsbook(docker_host, "backup", f"--inventory={inventory_path}")
    assert done.returncode == 0, done.stdout + done.stderr
    return old


def _inventory(base: Path, source: Path, logs: Path) -> Path:
    raw = yaml.safe_load(source.read_text())
    raw["backup"] = {"dir": str(base / "backups"), "retention_days": 14}
    raw.setdefault("remediation", {})["retention_days"] = 14
    # The machine's CPU is shared with other work, whose bursts RES-003 would take for this
    # stack's: the window's pre- and post-checks are about the deployment, not the test host.
    raw.setdefault("thresholds", {})["cpu_pressure_percent"] = 100
    hosts = raw.setdefault("hosts", {})
    local = hosts.setdefault("local", {"spec": "local://"})
    local["logs"] = [*local.get("logs", []), str(logs / "app.log")]
    path = base / "inventory.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _window_entries(inventory: Inventory) -> list[tuple[str, str, str]]:
    """(event, what, status) of the audit log, in order: the window's steps and the page."""
    entries = AuditLog(state_dir(inventory) / "audit.log").entries()
    return [
        (e["event"], e["remediation"].rsplit(".", 1)[-1], e.get("status", ""))
        for e in entries
        if "maintenance" in e["remediation"]
    ]


# -- the compose stack ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    docker_host = default_docker_host()
    problem = _engine_problem(docker_host)
    if problem:
        pytest.skip(problem)
    base = tmp_path_factory.mktemp("window")
    compose_file = base / "compose.yaml"
    compose_file.write_text(
        COMPOSE_FILE.read_text(encoding="utf-8")
        .replace(SHIPPED_APP, f"{APP}:dev")
        .replace("./containers/", f"{REPO}/containers/")
    )
    stack = ComposeStack(base / "stack", compose_file=compose_file, docker_host=docker_host)
    try:
        stack.up()
        yield stack
    finally:
        stack.down()
        _forget(stack)


def _forget(stack: ComposeStack) -> None:
    """The test's own names: its containers and image tags (the layers stay cached)."""
    for name in ("mwtest-other-x", f"{stack.project}-leftover-1"):
        docker(stack, "rm", "-f", name, check=False)
    listed = docker(stack, "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", check=False)
    for ref in listed.split():
        if ref.startswith((f"{APP}:", f"{PULLED}:", OTHER)) and ref != f"{APP}:dev":
            docker(stack, "rmi", ref, check=False)


def _variant(stack: ComposeStack, tmp_path: Path, ref: str) -> str:
    """An image of its own (the application's with a label), tagged `ref`; its ID."""
    folder = tmp_path / ref.rsplit(":", 1)[-1]
    folder.mkdir()
    (folder / "Dockerfile").write_text(f"FROM {APP}:dev\nLABEL opsbook.test.variant={ref}\n")
    docker(stack, "build", "-t", ref, str(folder))
    return docker(stack, "image", "inspect", "--format", "{{.Id}}", ref).strip()


# The engine is shared with other tests' stacks, which come and go meanwhile: only the test's
# own names are compared.
def _tags(stack: ComposeStack) -> set[str]:
    listed = docker(stack, "image", "ls", "--format", "{{.Repository}}:{{.Tag}}").split()
    return {ref for ref in listed if ref.startswith((f"{APP}:", f"{PULLED}:", OTHER))}


def _containers(stack: ComposeStack) -> set[str]:
    listed = docker(stack, "ps", "--all", "--format", "{{.Names}}").split()
    return {name for name in listed if name.startswith((f"{stack.project}-", "mwtest-"))}


@pytest.mark.containers
def test_cleanup_removes_only_what_is_past_retention_on_compose(
    stack: ComposeStack, tmp_path: Path
) -> None:
    logs = _logs(tmp_path / "logs")
    path = _inventory(tmp_path, stack.inventory_path, tmp_path / "logs")
    raw = yaml.safe_load(path.read_text())
    raw["deploy"] = {"registry": REGISTRY}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    inventory = load_inventory(path, environ={})
    old_backup = _old_backup(path, stack.docker_host, tmp_path / "backups")
    try:
        current = docker(stack, "image", "inspect", "--format", "{{.Id}}", f"{APP}:dev").strip()
        old0 = _variant(stack, tmp_path, f"{APP}:old0")
        prev1 = _variant(stack, tmp_path, f"{APP}:prev1")
        for tag in ("old0", "prev1"):  # as `opsbook deploy` leaves a pulled release
            docker(stack, "tag", f"{APP}:{tag}", f"{PULLED}:{tag}")
        _variant(stack, tmp_path, f"{APP}:stray")
        _variant(stack, tmp_path, OTHER)
        services = ("backend", "worker")
        for tag, image in (("old0", old0), ("prev1", prev1), ("cur2", current)):
            release = DeployedRelease(
                tag=tag, deployed_at=now_iso(), services=services, images={f"{APP}:dev": image}
            )
            record(state_dir(inventory), release)
        project = f"label=com.docker.compose.project={stack.project}"
        docker(stack, "create", "--label", project.removeprefix("label="),
               "--name", f"{stack.project}-leftover-1", f"{APP}:old0", "true")  # fmt: skip
        docker(stack, "create", "--label", "com.docker.compose.project=mwtest-other",
               "--name", "mwtest-other-x", OTHER, "true")  # fmt: skip
        tags_before, containers_before = _tags(stack), _containers(stack)

        plan = opsbook(stack.docker_host, "maintenance", "run", "cleanup", f"--inventory={path}",
                       f"--reports-dir={tmp_path / 'reports'}")  # fmt: skip
        assert plan.returncode == 0, plan.stdout + plan.stderr
        assert f"remove image {APP}:old0" in plan.stdout, plan.stdout
        assert f"remove image {PULLED}:old0" in plan.stdout, plan.stdout
        assert _tags(stack) == tags_before, "the plan removed something"

        done = opsbook(stack.docker_host, "maintenance", "run", "cleanup", "--apply",
                       f"--inventory={path}", f"--reports-dir={tmp_path / 'reports'}")  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert "maintenance cleanup: cleanup done; post-checks green" in done.stdout, done.stdout

        assert tags_before - _tags(stack) == {f"{APP}:old0", f"{PULLED}:old0", f"{APP}:stray"}
        assert {f"{APP}:dev", f"{APP}:prev1", f"{PULLED}:prev1", OTHER} <= _tags(stack)
        # Both names gone, the old release's image is gone from the engine (its disk freed).
        assert docker(stack, "image", "inspect", old0, check=False).strip() in ("", "[]"), old0
        assert containers_before - _containers(stack) == {f"{stack.project}-leftover-1"}
        assert "mwtest-other-x" in _containers(stack)
        assert {k for k, p in logs.items() if not p.exists()} == {"old1", "old2"}
        assert not old_backup.exists()
        # The two fresh ones taken beside the old one, and the window's own.
        assert len(list((tmp_path / "backups").glob("opsbook-backup-*"))) == 3
        assert [r.tag for r in deployed(state_dir(inventory))][-2:] == ["prev1", "cur2"]
        # The page on around the action, off after it, every step's intent and outcome.
        steps = _window_entries(inventory)
        order = [(event, what) for event, what, _ in steps]
        assert order == [
            ("intent", "precheck"), ("outcome", "precheck"),
            ("intent", "backup"), ("outcome", "backup"),
            ("intent", "maintenance_on"), ("outcome", "maintenance_on"),
            ("intent", "action"), ("outcome", "action"),
            ("intent", "maintenance_off"), ("outcome", "maintenance_off"),
            ("intent", "postcheck"), ("outcome", "postcheck"),
        ], steps  # fmt: skip
        assert {status for event, _, status in steps if event == "outcome"} == {"applied"}
    finally:
        _forget(stack)


def _upgrade_inventory(stack: ComposeStack, tmp_path: Path) -> Path:
    """The stack's inventory for a deploy inside the window, with its nightly backup."""
    _logs(tmp_path / "logs")  # LOG-001 of the pre-checks reads the log the inventory lists
    path = _inventory(tmp_path, stack.inventory_path, tmp_path / "logs")
    raw = yaml.safe_load(path.read_text())
    raw["deploy"] = {"readiness_deadline_s": 60}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    done = opsbook(stack.docker_host, "backup", f"--inventory={path}")  # the nightly backup
    assert done.returncode == 0, done.stdout + done.stderr
    return path


@pytest.mark.containers
def test_upgrade_deploys_a_good_release_inside_the_window(
    stack: ComposeStack, tmp_path: Path
) -> None:
    path = _upgrade_inventory(stack, tmp_path)
    inventory = load_inventory(path, environ={})
    try:
        good = _variant(stack, tmp_path, f"{APP}:good9")
        done = opsbook(stack.docker_host, "maintenance", "run", "upgrade", "--tag", "good9",
                       "--apply", f"--inventory={path}",
                       f"--reports-dir={tmp_path / 'reports'}")  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert "maintenance upgrade: upgrade done; post-checks green" in done.stdout, done.stdout
        for service in ("backend", "worker"):
            name = f"{stack.project}-{service}-1"
            assert docker(stack, "inspect", "--format", "{{.Image}}", name).strip() == good
        assert [r.tag for r in deployed(state_dir(inventory))][-1] == "good9"
        # The page on after the deploy's backup, off before its readiness wait, around the
        # switch; the window's action wraps the whole deploy.
        entries = AuditLog(state_dir(inventory) / "audit.log").entries()
        mine = [
            e["remediation"].rsplit(".", 1)[-1]
            for e in entries
            if e["event"] == "intent"
            and (e.get("release") == "good9" or "maintenance_o" in e["remediation"])
        ]
        expected = [
            "precheck", "action", "gate", "backup", "maintenance_on", "images", "record",
            "switch", "maintenance_off", "ready", "postdeploy", "postcheck",
        ]  # fmt: skip
        assert mine[-len(expected) :] == expected, mine
        outcomes = {
            e.get("status")
            for e in entries
            if e["event"] == "outcome" and e.get("release") == "good9"
        }
        assert outcomes == {"applied"}, outcomes
    finally:
        _forget(stack)


@pytest.mark.containers
def test_a_failed_upgrade_is_rolled_back_and_the_page_is_off_again(
    stack: ComposeStack, tmp_path: Path
) -> None:
    """A release whose backend answers 500 to POST /api/messages: the deploy's postdeploy
    gate fails and rolls it back, the page is off again, the window says the action failed."""
    path = _upgrade_inventory(stack, tmp_path)
    inventory = load_inventory(path, environ={})
    before = docker(stack, "inspect", "--format", "{{.Image}}", f"{stack.project}-backend-1")
    try:
        (tmp_path / "break.py").write_text(BREAK)
        lines = [f"FROM {APP}:dev", "USER root", "COPY break.py /tmp/break.py",
                 "RUN python3 /tmp/break.py", "USER app"]  # fmt: skip
        (tmp_path / "Dockerfile").write_text("\n".join(lines) + "\n")
        docker(stack, "build", "--network", "host", "-t", f"{APP}:bad9", str(tmp_path))
        done = opsbook(stack.docker_host, "maintenance", "run", "upgrade", "--tag", "bad9",
                       "--apply", f"--inventory={path}",
                       f"--reports-dir={tmp_path / 'reports'}")  # fmt: skip
        assert done.returncode == 4, done.stdout + done.stderr
        assert "maintenance upgrade: upgrade failed: postdeploy gate failed" in done.stderr
        assert "rolled back to" in done.stderr, done.stderr
        after = docker(stack, "inspect", "--format", "{{.Image}}", f"{stack.project}-backend-1")
        assert after == before, "the bad release still runs"
        frontend = inventory.http["frontend"]
        assert requests.get(frontend.url + frontend.health_path, timeout=5).status_code == 200
        entries = AuditLog(state_dir(inventory) / "audit.log").entries()
        mine = [
            (e["event"], e["remediation"].rsplit(".", 1)[-1], e.get("status", ""))
            for e in entries
            if e.get("release") == "bad9" or "maintenance_o" in e["remediation"]
        ]
        off = mine.index(("outcome", "maintenance_off", "applied"))
        assert mine.index(("outcome", "maintenance_on", "applied")) < off, mine
        assert off < mine.index(("outcome", "rollback", "applied")), mine
        assert ("outcome", "action", "applied") in mine, mine  # the deploy ran to its end
        assert mine[-2:] == [("intent", "postcheck", ""), ("outcome", "postcheck", "applied")]
    finally:
        _forget(stack)


@pytest.mark.containers
def test_patch_and_upgrade_are_planned_as_deploys(stack: ComposeStack, tmp_path: Path) -> None:
    """Plans only: a rebuild and roll-out does not fit the suite's time (see the docs)."""
    path = _inventory(tmp_path, stack.inventory_path, tmp_path / "logs")
    patch = opsbook(stack.docker_host, "maintenance", "run", "patch", f"--inventory={path}")
    assert patch.returncode == 0, patch.stdout + patch.stderr
    assert "docker compose build --pull --no-cache" in patch.stdout, patch.stdout
    offline = opsbook(
        stack.docker_host, "maintenance", "run", "patch", "--offline", f"--inventory={path}"
    )
    assert "rebuilt with `docker compose build --no-cache`" in offline.stdout, offline.stdout
    upgrade = opsbook(
        stack.docker_host, "maintenance", "run", "upgrade", "--tag", "v9", f"--inventory={path}"
    )
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    assert "opsbook deploy --tag v9" in upgrade.stdout, upgrade.stdout


# -- the native sandbox -----------------------------------------------------------------------


def test_cleanup_on_the_sandbox_removes_logs_and_backups_past_retention(
    fresh_sandbox: Stack, tmp_path: Path
) -> None:
    logs = _logs(tmp_path / "logs")
    path = _inventory(tmp_path, fresh_sandbox.inventory_path, tmp_path / "logs")
    inventory = load_inventory(path, environ={})
    old_backup = _old_backup(path, None, tmp_path / "backups")
    done = opsbook(None, "maintenance", "run", "cleanup", "--apply", f"--inventory={path}",
                   f"--reports-dir={tmp_path / 'reports'}")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert {k for k, p in logs.items() if not p.exists()} == {"old1", "old2"}
    assert not old_backup.exists()
    steps = _window_entries(inventory)
    assert [w for e, w, _ in steps if e == "intent"] == [
        "precheck", "backup", "maintenance_on", "action", "maintenance_off", "postcheck",
    ], steps  # fmt: skip
    patch = opsbook(None, "maintenance", "run", "patch", "--apply", f"--inventory={path}")
    assert patch.returncode == 0, patch.stdout + patch.stderr
    assert "patch: not applicable" in patch.stdout, patch.stdout


def test_bad_usage_is_one_line_and_exit_2(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump({"name": "t", "http": {}}))
    for args, said in (
        (["run"], "run needs an action"),
        (["run", "upgrade"], "upgrade needs --tag"),
        (["run", "cleanup", "--allow=everything"], "--allow: unknown everything"),
        (["on", "cleanup"], "takes no action"),
    ):
        done = opsbook(None, "maintenance", *args, f"--inventory={inventory}")
        assert done.returncode == 2, done.stdout + done.stderr
        assert said in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_a_window_waits_for_no_one_while_another_run_holds_the_lock(tmp_path: Path) -> None:
    """Refused (exit 3) before any step: not even the pre-checks run."""
    inventory = tmp_path / "inventory.yaml"
    raw = {
        "name": "locked",
        "http": {"frontend": {"url": "http://127.0.0.1:9", "kind": "frontend"}},
        "state_dir": str(tmp_path / "state"),
    }
    inventory.write_text(yaml.safe_dump(raw))
    lock = RemediationLock(tmp_path / "state" / "remediation.lock")
    assert lock.acquire("another run")
    try:
        done = opsbook(None, "maintenance", "run", "cleanup", "--apply",
                       f"--inventory={inventory}",
                       f"--reports-dir={tmp_path / 'reports'}")  # fmt: skip
    finally:
        lock.release()
    assert done.returncode == 3, done.stdout + done.stderr
    assert "another run holds the remediation lock (another run" in done.stderr, done.stderr
    assert "precheck" not in done.stdout, done.stdout
    assert not (tmp_path / "state" / "audit.log").exists()
