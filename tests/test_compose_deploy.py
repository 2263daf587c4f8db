"""`opsbook deploy` on a real compose stack: a good release deployed (its tag seen in `docker
inspect`), a bad one (its backend answers 500 on POST /api/messages) caught by the postdeploy
gate and rolled back automatically to the release before it, and ROLLBACK-001's fix bringing
the previous release back, and with --allow=restore its pre-deploy backup; a release pulled
from a real registry on loopback (Debian's docker-registry, tests/registry_server.py), and a tag
that registry lacks refused in one line before anything changes.

The engine's tests (marker `containers`) share one stack for the module, from a copy of
compose.yaml whose application image has a name of its own (`localhost/opsbook-deploytest-app`):
a deploy moves the image names of its compose file, and the shipped `localhost/opsbook-app:dev`
is shared by every other compose test.
They need a Docker API and `docker compose`, and are skipped, with the reason, when either is
missing. What fails before the engine is asked (bad usage, a gate command that fails, the lock
held by another run) is tested without one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml
from registry_server import DOCKER_REGISTRY, Registry
from support import CheckRun
from test_compose_stack import _engine_problem

from opsbook.canary import run_canary
from opsbook.compose import COMPOSE_FILE, default_docker_host
from opsbook.deploy import bring_up, compose_images
from opsbook.inventory import Inventory, load_inventory
from opsbook.releases import DeployedRelease, deployed
from opsbook.remediate.audit import AuditLog
from opsbook.remediate.lock import RemediationLock
from opsbook.remediate.runner import state_dir
from opsbook.sandbox.compose import ComposeStack

REPO = Path(__file__).resolve().parents[1]
SHIPPED_APP = "localhost/opsbook-app:dev"
APP = "localhost/opsbook-deploytest-app"
# A release whose backend answers 500 to every POST /api/messages, while /health stays 200:
# readiness passes, the canary (the postdeploy gate) does not.
BREAK = """\
import pathlib
backend = pathlib.Path("/app/chatapp/backend.py")
code = backend.read_text()
head = "    def post_message(self, payload: object) -> tuple[int, dict[str, str]]:\\n"
assert head in code, "post_message not found"
backend.write_text(code.replace(head, head + '        raise RuntimeError("a bad release")\\n'))
"""


def _env(stack: ComposeStack | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPSBOOK_", "PYTEST_"))}
    if stack is not None and stack.docker_host:
        env["DOCKER_HOST"] = stack.docker_host
    env["DOCKER_BUILDKIT"] = "0"
    return env


def docker(stack: ComposeStack, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        ["docker", *args], env=_env(stack), input=stdin, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    docker_host = default_docker_host()
    problem = _engine_problem(docker_host)
    if problem:
        pytest.skip(problem)
    base = tmp_path_factory.mktemp("deploy")
    compose_file = base / "compose.yaml"
    shipped = COMPOSE_FILE.read_text(encoding="utf-8")
    compose_file.write_text(
        shipped.replace(SHIPPED_APP, f"{APP}:dev").replace("./containers/", f"{REPO}/containers/")
    )
    stack = ComposeStack(base / "stack", compose_file=compose_file, docker_host=docker_host)
    _forget_releases(stack)  # a run cut short left some: good1 must be built, not found
    try:
        stack.up()
        yield stack
    finally:
        stack.down()
        _forget_releases(stack)


def _forget_releases(stack: ComposeStack) -> None:
    """Untag every release of the test's application image (the layers stay cached)."""
    listed = subprocess.run(
        ["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", APP],
        env=_env(stack), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    # Podman lists every tag of a matching image, the shipped image's own among them: only
    # the test's names are untagged.
    for ref in (line for line in listed.stdout.split() if line.startswith(f"{APP}:")):
        subprocess.run(
            ["docker", "rmi", ref], env=_env(stack), capture_output=True, timeout=60, check=False
        )


@pytest.fixture(scope="module")
def inventory_path(stack: ComposeStack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stack's inventory with a backup directory and the runbook's gate commands."""
    base = tmp_path_factory.mktemp("deploy-inventory")
    raw = yaml.safe_load(stack.inventory_path.read_text())
    raw["backup"] = {"dir": str(base / "backups")}
    raw["deploy"] = {
        "readiness_deadline_s": 60,
        "gate_commands": {
            "tests": f"{sys.executable} -c \"print('the release tests passed')\"",
            "lint": "echo lint clean",
        },
    }
    path = base / "inventory.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    # The nightly backup that BACKUP-001 of the predeploy gate looks for (cron's, in production).
    nightly = opsbook(stack, "backup", f"--inventory={path}")
    assert nightly.returncode == 0, nightly.stdout + nightly.stderr
    return path


@pytest.fixture(scope="module")
def inventory(inventory_path: Path) -> Inventory:
    return load_inventory(inventory_path, environ={})


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("deploy-reports")


def opsbook(stack: ComposeStack | None, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "opsbook", *args], cwd=REPO, env=_env(stack),
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip


def deploy(
    stack: ComposeStack, inventory_path: Path, reports: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return opsbook(
        stack, "deploy", f"--inventory={inventory_path}", f"--reports-dir={reports}", *args
    )


def image_of(stack: ComposeStack, service: str) -> str:
    """The ID of the image the service's container runs (`docker inspect`)."""
    name = f"{stack.project}-{service}-1"
    return docker(stack, "inspect", "--format", "{{.Image}}", name).strip().removeprefix("sha256:")


def image_id(stack: ComposeStack, ref: str) -> str:
    return (
        docker(stack, "image", "inspect", "--format", "{{.Id}}", ref)
        .strip()
        .removeprefix("sha256:")
    )


def tags_of(stack: ComposeStack, image: str) -> list[str]:
    return list(
        json.loads(docker(stack, "image", "inspect", "--format", "{{json .RepoTags}}", image))
    )


def build_variant(stack: ComposeStack, tmp_path: Path, tag: str, *, broken: bool) -> None:
    """Release `tag` of the application: good1 with a label, or with its POST handler broken."""
    (tmp_path / "break.py").write_text(BREAK)
    lines = [f"FROM {APP}:good1", f"LABEL opsbook.test.release={tag}"]
    if broken:
        lines += [
            "USER root",
            "COPY break.py /tmp/break.py",
            "RUN python3 /tmp/break.py",
            "USER app",
        ]
    (tmp_path / "Dockerfile").write_text("\n".join(lines) + "\n")
    docker(stack, "build", "--network", "host", "-t", f"{APP}:{tag}", str(tmp_path))


def audit_steps(inventory: Inventory, release: str) -> list[tuple[str, str, str]]:
    """(event, step, status) of the audit log's entries of one release's deploy."""
    entries = AuditLog(state_dir(inventory) / "audit.log").entries()
    return [
        (e["event"], e["remediation"].rsplit(".", 1)[-1], e.get("status", ""))
        for e in entries
        if e.get("release") == release
    ]


@pytest.mark.containers
def test_good_release_is_deployed(
    stack: ComposeStack, inventory_path: Path, inventory: Inventory, reports: Path
) -> None:
    before = image_of(stack, "backend")
    done = deploy(stack, inventory_path, reports, "--tag", "good1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "deploy good1: deployed good1 (backend, worker)" in done.stdout, done.stdout
    built = image_id(stack, f"{APP}:good1")
    for service in ("backend", "worker"):
        running = image_of(stack, service)
        assert running == built, f"{service} runs {running[:12]}, expected good1's {built[:12]}"
        assert f"{APP}:good1" in tags_of(stack, running)
    # What ran before is kept under a name of its own, and recorded as the release before.
    releases = deployed(state_dir(inventory))
    assert [r.tag for r in releases][-1] == "good1"
    assert releases[-2].tag.startswith("predeploy-")
    assert releases[-2].images[f"{APP}:dev"].removeprefix("sha256:") == before
    assert releases[-1].backup is not None
    assert releases[-1].backup.startswith("opsbook-backup-")
    # The gate commands' output is the evidence, beside the checks' own output.
    evidence = Path(done.stdout.split("evidence: ")[1].split()[0])
    assert "the release tests passed" in (evidence / "gate-tests.log").read_text()
    assert "lint clean" in (evidence / "gate-lint.log").read_text()
    assert (evidence / "predeploy.log").is_file()
    assert (evidence / "postdeploy.log").is_file()
    steps = audit_steps(inventory, "good1")
    assert [s for s in steps if s[0] == "outcome" and s[2] != "applied"] == [], steps
    assert [s[1] for s in steps if s[0] == "intent"] == [
        "gate", "gate", "gate", "backup", "images", "record", "switch", "ready", "postdeploy",
    ], steps  # fmt: skip


@pytest.mark.containers
def test_bad_release_fails_the_postdeploy_gate_and_is_rolled_back(
    stack: ComposeStack, inventory_path: Path, inventory: Inventory, reports: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    good = image_of(stack, "backend")
    build_variant(stack, tmp_path, "bad1", broken=True)
    bad = image_id(stack, f"{APP}:bad1")
    done = deploy(stack, inventory_path, reports, "--tag", "bad1")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "deploy bad1: postdeploy gate failed" in done.stderr, done.stderr
    assert "DEPLOY-006" in done.stderr, done.stderr
    assert "rolled back to good1" in done.stderr, done.stderr
    for service in ("backend", "worker"):
        running = image_of(stack, service)
        assert running == good != bad, f"{service} runs {running[:12]}, not good1's {good[:12]}"
    assert f"{APP}:good1" in tags_of(stack, good)
    assert run_canary(inventory, 10.0).failed_hop is None
    assert [r.tag for r in deployed(state_dir(inventory))][-1] == "good1"
    steps = audit_steps(inventory, "bad1")
    assert ("outcome", "postdeploy", "failed") in steps, steps
    assert ("outcome", "rollback", "applied") in steps, steps


def _write_row(inventory: Inventory) -> str:
    """A conversation written by hand after the pre-deploy backup (the restore loses it)."""
    pg = inventory.postgres["chatdb"]
    assert pg.admin is not None
    assert pg.admin.password is not None
    conversation = str(uuid.uuid4())
    with psycopg.connect(
        host=pg.host, port=pg.port, dbname=pg.database, user=pg.admin.user,
        password=pg.admin.password.resolve().reveal(), connect_timeout=3, autocommit=True,
    ) as conn:  # fmt: skip
        conn.execute(
            "INSERT INTO conversations (id, user_id) VALUES (%s, 'deploy-test')", (conversation,)
        )
    return conversation


def _has_conversation(inventory: Inventory, conversation: str) -> bool:
    pg = inventory.postgres["chatdb"]
    assert pg.admin is not None
    assert pg.admin.password is not None
    with psycopg.connect(
        host=pg.host, port=pg.port, dbname=pg.database, user=pg.admin.user,
        password=pg.admin.password.resolve().reveal(), connect_timeout=3,
    ) as conn:  # fmt: skip
        row = conn.execute("SELECT 1 FROM conversations WHERE id = %s", (conversation,))
        return row.fetchone() is not None


@pytest.mark.containers
def test_rollback_fix_brings_the_release_before_back(
    stack: ComposeStack, inventory_path: Path, inventory: Inventory, reports: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    good1 = image_of(stack, "backend")
    build_variant(stack, tmp_path, "good2", broken=False)
    done = deploy(stack, inventory_path, reports, "--tag", "good2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert image_of(stack, "backend") == image_id(stack, f"{APP}:good2") != good1
    written = _write_row(inventory)

    plan = opsbook(stack, "deploy", "rollback", f"--inventory={inventory_path}")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "[rollback] roll back from good2 to good1" in plan.stdout, plan.stdout
    assert "[restore]" in plan.stdout
    assert "(only with --allow=restore)" in plan.stdout
    assert image_of(stack, "backend") != good1  # a plan changes nothing
    refused = opsbook(stack, "deploy", "rollback", f"--inventory={inventory_path}", "--apply")
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "not allowed: rollback" in refused.stdout

    # good2 goes bad after its deploy (a person swaps its image by hand): the postdeploy run
    # fails ROLLBACK-001, whose fix brings good1 back, and the check run again passes.
    swapped = DeployedRelease(
        tag="bad1", deployed_at="", services=("backend",),
        images={f"{APP}:dev": image_id(stack, f"{APP}:bad1")},
    )  # fmt: skip
    bring_up(inventory, compose_images(inventory), swapped)
    run = CheckRun(
        opsbook(
            stack, "check", "-m", "postdeploy", f"--inventory={inventory_path}",
            f"--reports-dir={reports}", "--remediate=apply", "--allow=rollback,restore",
        ),
        reports,
    )  # fmt: skip
    assert run.outcome("DEPLOY-006") == "failed", run.output
    assert run.outcome("ROLLBACK-001") == "fixed", run.output
    attempt = run.row("ROLLBACK-001")["remediation_attempt"]
    assert any("rolled back good2 -> good1" in line for line in attempt["plan"]), attempt
    # With --allow=restore, the backup taken before good2 was deployed is restored after it.
    restored = [line for line in attempt["plan"] if line.startswith("[restore]")]
    assert len(restored) == 1, attempt
    assert "-> restored opsbook-backup-" in restored[0], restored
    for service in ("backend", "worker"):
        assert image_of(stack, service) == good1
    assert run_canary(inventory, 10.0).failed_hop is None
    assert not _has_conversation(inventory, written), "the pre-deploy backup was not restored"
    assert [r.tag for r in deployed(state_dir(inventory))][-1] == "good1"


# -- before the engine is asked --------------------------------------------------------------


def offline_inventory(tmp_path: Path, **sections: object) -> Path:
    """A compose deployment whose engine is never reached (its socket does not exist)."""
    raw: dict[str, object] = {
        "name": "offline",
        "compose": {"project": "opsbook-offline", "docker_host": "unix:///nonexistent.sock"},
        "services": {"backend": {"role": "api"}},
        "backup": {"dir": str(tmp_path / "backups")},
        "state_dir": str(tmp_path / "state"),
        **sections,
    }
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_bad_usage_is_one_line_and_exit_2(tmp_path: Path) -> None:
    inventory = offline_inventory(tmp_path)
    cases = {
        "bad release tag 'no good'": ["--tag", "no good", f"--inventory={inventory}"],
        "cannot read": [f"--inventory={tmp_path / 'missing.yaml'}"],
    }
    bare = tmp_path / "bare.yaml"
    bare.write_text("name: bare\n")
    cases["nothing to deploy with: the inventory has no compose: and no deploy.commands"] = [
        f"--inventory={bare}"
    ]
    unsafe = tmp_path / "no-backup.yaml"
    raw = yaml.safe_load(inventory.read_text())
    del raw["backup"]
    unsafe.write_text(yaml.safe_dump(raw))
    cases["the inventory has no backup: section"] = [f"--inventory={unsafe}"]
    for expected, args in cases.items():
        done = opsbook(None, "deploy", f"--reports-dir={tmp_path / 'reports'}", *args)
        assert done.returncode == 2, f"{args}: {done.returncode}\n{done.stdout}{done.stderr}"
        assert expected in done.stderr, f"{args}: {done.stderr}"
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "Traceback" not in done.stderr


def test_failing_gate_command_stops_the_deploy_before_anything_changes(tmp_path: Path) -> None:
    inventory = offline_inventory(
        tmp_path,
        deploy={"gate_commands": {"tests": "echo '2 failed, 40 passed'; exit 3", "lint": "true"}},
    )
    reports = tmp_path / "reports"
    done = opsbook(None, "deploy", "--tag", "v2", f"--inventory={inventory}",
                   f"--reports-dir={reports}")  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.strip() == (
        "deploy v2: predeploy gate failed: gate command tests exited 3 (2 failed, 40 passed); "
        "nothing was changed"
    ), done.stderr
    (evidence,) = (reports / "deploys").iterdir()
    assert "2 failed, 40 passed" in (evidence / "gate-tests.log").read_text()
    assert not (evidence / "gate-lint.log").exists()  # the gate stops at its first failure
    summary = json.loads((evidence / "deploy.json").read_text())
    assert [s["status"] for s in summary["steps"]] == ["failed"]
    assert not (tmp_path / "state" / "releases.json").exists()
    entries = AuditLog(tmp_path / "state" / "audit.log").entries()
    assert [(e["event"], e["remediation"], e.get("status")) for e in entries] == [
        ("intent", "opsbook.deploy.gate", None),
        ("outcome", "opsbook.deploy.gate", "failed"),
    ]
    assert entries[0]["steps"] == [
        "[deploy] gate command tests: echo '2 failed, 40 passed'; exit 3"
    ]
    verified = opsbook(None, "audit-log", "verify", f"--inventory={inventory}")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_deploy_waits_for_no_one_while_another_run_holds_the_lock(tmp_path: Path) -> None:
    inventory = offline_inventory(tmp_path)
    lock = RemediationLock(tmp_path / "state" / "remediation.lock")
    assert lock.acquire("run of the test")
    try:
        done = opsbook(None, "deploy", "--tag", "v2", f"--inventory={inventory}",
                       f"--reports-dir={tmp_path / 'reports'}")  # fmt: skip
    finally:
        lock.release()
    assert done.returncode == 3, done.stdout + done.stderr
    assert "another run holds the lock (run of the test" in done.stderr, done.stderr


@pytest.mark.containers
def test_deploy_commands_deploy_and_roll_back_without_a_compose_section(
    stack: ComposeStack, inventory_path: Path, tmp_path: Path
) -> None:
    """The path of systemd and command deployments (deploy.commands on deploy.host), on the
    same stack: its deploy and rollback are the inventory's shell commands, run through
    testinfra on this machine, and opsbook knows nothing of the engine."""
    raw = yaml.safe_load(inventory_path.read_text())
    raw.pop("compose")
    raw["state_dir"] = str(tmp_path / "state")
    port = yaml.safe_load(stack.inventory_path.read_text())["http"]["backend"]["url"].rsplit(":")[
        -1
    ]
    compose = f"docker compose -p {stack.project} -f {stack.compose_file}"
    # What an operator's script would do. The stack's nginx looks the backend up again within
    # seconds, and the deploy's readiness waits until it no longer answers 502. No restart of
    # nginx: on Podman 4.3 a container's restart makes its network's DNS (aardvark-dns 1.4)
    # drop the other containers' queries for 5-40 s (containers/aardvark-dns#389), and the
    # worker's first look-up of `postgres` then outlasts the canary.
    release = (
        f"docker tag {APP}:{{tag}} {APP}:dev && "
        f"OPSBOOK_COMPOSE_DIR={stack.dir} OPSBOOK_PORT_BACKEND={port} {compose} "
        "up --detach --force-recreate --no-deps backend worker"
    )
    raw["deploy"]["commands"] = {"deploy": release, "rollback": release}
    path = inventory_path.parent / "commands-inventory.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    good = image_of(stack, "backend")
    assert good == image_id(stack, f"{APP}:good1")
    done = opsbook(
        stack, "deploy", "--tag", "bad1", "--previous", "good1", "--no-backup",
        f"--inventory={path}", f"--reports-dir={tmp_path / 'reports'}",
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "deploy bad1: postdeploy gate failed" in done.stderr, done.stderr
    assert "rolled back to good1" in done.stderr, done.stderr
    assert image_of(stack, "backend") == good
    assert [r.tag for r in deployed(tmp_path / "state")] == ["good1"]
    entries = AuditLog(tmp_path / "state" / "audit.log").entries()
    switch = [e for e in entries if e["remediation"] == "opsbook.deploy.switch"]
    assert switch[0]["steps"] == [f"[deploy] deploy bad1: {release.replace('{tag}', 'bad1')}"]


# -- pulled from a registry ------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(stack: ComposeStack) -> Iterator[Registry]:
    """Debian's docker-registry on a loopback port the engine trusts over plain HTTP (see
    registry_server); stopped, and the images pushed to it deleted, after the module."""
    if not DOCKER_REGISTRY.exists():
        pytest.skip(
            f"no {DOCKER_REGISTRY} (Debian's docker-registry: scripts/install-system-packages)"
        )
    server = Registry()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        # A pull leaves the registry's name of the image on the engine, as `docker pull` does
        # (the layers stay cached; like _forget_releases, a name already gone is no failure).
        listed = docker(stack, "image", "ls", "--format", "{{.Repository}}:{{.Tag}}")
        for ref in (line for line in listed.split() if line.startswith(f"{server.address}/")):
            subprocess.run(
                ["docker", "rmi", ref], env=_env(stack), capture_output=True, timeout=60,
                check=False,
            )  # fmt: skip


@pytest.fixture(scope="module")
def registry_inventory(inventory_path: Path, registry: Registry) -> Path:
    """The stack's inventory whose deploy.registry is the loopback registry's `chat` folder."""
    raw = yaml.safe_load(inventory_path.read_text())
    raw["deploy"]["registry"] = f"{registry.address}/chat"
    path = inventory_path.parent / "registry-inventory.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.containers
def test_a_release_in_the_registry_is_pulled_not_built(
    stack: ComposeStack, registry: Registry, registry_inventory: Path, inventory: Inventory,
    reports: Path, tmp_path: Path,
) -> None:  # fmt: skip
    before = image_of(stack, "backend")
    # Release pulled1: what runs now with a label (the module's other tests need not run first);
    # without the cache, an image of its own, never one an earlier run left under other names.
    (tmp_path / "Dockerfile").write_text(f"FROM {before}\nLABEL opsbook.test.release=pulled1\n")
    docker(stack, "build", "--no-cache", "--network", "host", "-t", f"{APP}:pulled1", str(tmp_path))
    pushed_id = image_id(stack, f"{APP}:pulled1")
    source = f"{registry.address}/chat/{APP.rsplit('/', 1)[-1]}:pulled1"
    docker(stack, "tag", f"{APP}:pulled1", source)
    pushed = subprocess.run(
        ["docker", "push", source], env=_env(stack), capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip
    assert pushed.returncode == 0, (
        f"docker push {source}: {pushed.stderr.strip()} (a Podman engine trusts the test "
        "registry over plain HTTP once scripts/setup-container-engine has written its "
        "registries.conf.d entry)"
    )
    # Only the registry has the release now: the engine has neither name (the layers below stay).
    for name in (source, f"{APP}:pulled1"):  # one at a time: Podman removes an image whose
        docker(stack, "rmi", name)  # every name one `rmi` lists, and then misses the second
    assert subprocess.run(
        ["docker", "image", "inspect", f"{APP}:pulled1"], env=_env(stack), capture_output=True,
        timeout=60, check=False,
    ).returncode != 0  # fmt: skip

    done = deploy(stack, registry_inventory, reports, "--tag", "pulled1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "deploy pulled1: deployed pulled1 (backend, worker)" in done.stdout, done.stdout
    assert f"images: pull {source}" in done.stdout, done.stdout
    assert "  pulled " in done.stdout, done.stdout
    assert "images: build" not in done.stdout, done.stdout
    assert f"GET /v2/chat/{APP.rsplit('/', 1)[-1]}/manifests/pulled1" in registry.log()
    running = image_of(stack, "backend")
    assert running != before
    assert running == image_id(stack, f"{APP}:pulled1") == pushed_id, (
        f"backend runs {running[:12]}, pushed {pushed_id[:12]}"
    )
    assert image_of(stack, "worker") == running
    labels = json.loads(docker(stack, "inspect", "--format", "{{json .Config.Labels}}", running))
    assert labels.get("opsbook.test.release") == "pulled1", labels
    assert [r.tag for r in deployed(state_dir(inventory))][-1] == "pulled1"
    entries = AuditLog(state_dir(inventory) / "audit.log").entries()
    images = [
        e
        for e in entries
        if e.get("release") == "pulled1" and e["remediation"] == "opsbook.deploy.images"
    ]
    assert [e["event"] for e in images] == ["intent", "outcome"], images
    commands = " | ".join(images[0]["steps"])
    assert f"docker pull {source}" in commands, commands
    assert f"docker tag {source} {APP}:pulled1" in commands, commands
    assert images[1]["status"] == "applied", images[1]
    assert images[1]["reason"].startswith("pulled "), images[1]
    assert running.startswith(images[1]["reason"].removeprefix("pulled ")), images[1]
    steps = audit_steps(inventory, "pulled1")
    assert [s for s in steps if s[0] == "outcome" and s[2] != "applied"] == [], steps


@pytest.mark.containers
def test_a_tag_the_registry_lacks_is_one_line_and_nothing_changes(
    stack: ComposeStack, registry: Registry, registry_inventory: Path, inventory: Inventory,
    reports: Path,
) -> None:  # fmt: skip
    before = image_of(stack, "backend")
    recorded = deployed(state_dir(inventory))
    done = deploy(stack, registry_inventory, reports, "--tag", "missing1")
    assert done.returncode == 4, done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    line = done.stderr.strip()
    assert line.startswith("deploy missing1: `docker pull "), line
    assert "manifest unknown" in line or "name unknown" in line, line  # the tag, or the repo
    assert line.endswith("; nothing was changed"), line
    assert "Traceback" not in done.stdout + done.stderr
    for service in ("backend", "worker"):
        assert image_of(stack, service) == before
    assert deployed(state_dir(inventory)) == recorded
    steps = audit_steps(inventory, "missing1")
    assert ("outcome", "images", "failed") in steps, steps
    assert [s[1] for s in steps if s[0] == "intent"][-1] == "images", steps
