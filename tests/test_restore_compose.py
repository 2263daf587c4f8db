"""The whole restore on a real compose stack: the writers stopped and started as containers,
the queue lists restored through Redis's own protocol (its data directory is inside its
container), and the canary getting through nginx in front of the backend without a reload
(containers/nginx looks the backend's new address up at request time). And the
restore drill (BACKUP-003) of the stack's backups: its PostgreSQL is the image's Debian
package, which may be a minor release newer than the drill's local one (15.20 against 15.18
here, whose dumps give every column the attribute option `pg_attver` that 15.18 refuses).

Needs a Docker API and the compose plugin (skipped with the reason otherwise), like
tests/test_compose_stack.py; one stack for the module.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from support import CheckRun
from test_backup import backup_command
from test_compose_stack import _engine_problem

from opsbook import backup
from opsbook.canary import admin_client, admin_connection
from opsbook.compose import default_docker_host
from opsbook.inventory import load_inventory
from opsbook.sandbox.compose import ComposeStack

pytestmark = pytest.mark.containers

WRITERS = ("backend", "worker")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    docker_host = default_docker_host()
    problem = _engine_problem(docker_host)
    if problem:
        pytest.skip(problem)
    stack = ComposeStack(tmp_path_factory.mktemp("compose-restore"), docker_host=docker_host)
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


def _started_at(stack: ComposeStack) -> dict[str, str]:
    """When each writer's container last started, as the engine says."""
    env = {**os.environ, **({"DOCKER_HOST": stack.docker_host} if stack.docker_host else {})}
    found = {}
    for status in stack.status():
        if status.name in WRITERS:
            assert status.container, status
            done = subprocess.run(
                ["docker", "inspect", "--format", "{{.State.StartedAt}}", status.container],
                env=env, capture_output=True, text=True, timeout=30, check=True,
            )  # fmt: skip
            found[status.name] = done.stdout.strip()
    return found


def test_restore_on_compose_brings_rows_and_queue_back_through_nginx(
    stack: ComposeStack, tmp_path: Path
) -> None:
    raw = yaml.safe_load(stack.inventory_path.read_text())
    raw["backup"] = {"dir": str(tmp_path / "backups")}
    raw["remediation"] = {"budgets": {"restore": {"count": 10, "per_s": 86400}}}
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(raw))
    inventory = load_inventory(path, environ={})
    frontend = inventory.http["frontend"].url
    postgres, queue = inventory.postgres["chatdb"], inventory.redis["queue"]

    ids = []
    for n in range(3):
        answer = requests.post(
            f"{frontend}/api/messages", json={"content": f"c{n}", "user_id": "restore"}, timeout=5
        )
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["id"])
    with admin_connection(postgres, 5) as conn:
        deadline = time.monotonic() + 60  # a bound against a hang, not a timing
        while conn.execute(
            "SELECT count(*) FROM messages WHERE id = ANY(%s::uuid[])", (ids,)
        ).fetchone()[0] < len(ids):  # fmt: skip
            assert time.monotonic() < deadline, "the worker did not store the messages"
            time.sleep(0.2)
    taken = backup_command("--inventory", str(path))
    assert taken.returncode == 0, taken.stderr

    with admin_connection(postgres, 5) as conn:
        conn.execute("DELETE FROM messages WHERE id = ANY(%s::uuid[])", (ids,))
    client = admin_client(queue, 5)
    for each in ids:
        client.lrem(queue.queues.processed, 0, each)
    before = _started_at(stack)

    done = backup_command(
        "restore", "latest", "--inventory", str(path), "--apply", "--allow=restore",
        "--reports-dir", str(tmp_path / "reports"),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[restore] start backend again" in done.stdout, done.stdout
    assert "reload frontend" not in done.stdout, done.stdout
    assert "canary passed" in done.stdout, done.stdout

    with admin_connection(postgres, 5) as conn:
        restored = conn.execute(
            "SELECT count(*) FROM messages WHERE id = ANY(%s::uuid[])", (ids,)
        ).fetchone()[0]  # fmt: skip
    assert restored == len(ids)
    assert set(ids) <= set(client.lrange(queue.queues.processed, 0, -1))
    client.close()
    after = _started_at(stack)
    for name in WRITERS:
        assert after[name] != before[name], f"{name}'s container was not stopped and started"


def _drill_inventory(stack: ComposeStack, backups: Path) -> Path:
    raw = yaml.safe_load(stack.inventory_path.read_text())
    raw["backup"] = {"dir": str(backups)}
    path = backups.parent / "drill-inventory.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _drill(stack: ComposeStack, inventory: Path, reports: Path) -> CheckRun:
    """BACKUP-003, with BACKUP-002 (the manifest's), run by pytest on the checkout's checks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPSBOOK_", "PYTEST_"))}
    if stack.docker_host:
        env["DOCKER_HOST"] = stack.docker_host
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-m", "backup",
         "--check=BACKUP-002,BACKUP-003", f"--inventory={inventory}", f"--reports-dir={reports}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    return CheckRun(done, reports)


def _server_version(stack: ComposeStack) -> str:
    postgres = load_inventory(stack.inventory_path, environ={}).postgres["chatdb"]
    with admin_connection(postgres, 5) as conn:
        return str(conn.execute("SHOW server_version").fetchone()[0]).split()[0]  # type: ignore[index]


def test_drill_restores_the_compose_servers_backup(stack: ComposeStack, tmp_path: Path) -> None:
    """The drill passes on the stack's own backup, whatever minor release its server is; a
    newer one's unknown column options are left out and listed in the evidence."""
    inventory = _drill_inventory(stack, tmp_path / "backups")
    frontend = load_inventory(inventory, environ={}).http["frontend"].url
    answer = requests.post(
        f"{frontend}/api/messages", json={"content": "drill", "user_id": "drill"}, timeout=5
    )
    assert answer.status_code == 202, answer.text
    taken = backup_command("--inventory", str(inventory))
    assert taken.returncode == 0, taken.stderr

    run = _drill(stack, inventory, tmp_path / "reports")
    row = run.row("BACKUP-003", "chatdb")
    assert row["outcome"] == "passed", run.output
    restored, production = row["observed"]["rows"]["messages"]
    assert restored >= 1, row["observed"]
    assert production >= 1, row["observed"]
    scratch = json.loads(row["evidence"]["scratch restore"])
    server = _server_version(stack)
    assert scratch["dumped from"] == server, scratch
    # Options are left out of a newer minor release's dump only, never of the drill's own.
    local = scratch["scratch server"]
    newer = tuple(map(int, server.split("."))) > tuple(map(int, local.split(".")))
    assert newer or not scratch["column options left out"], scratch


@pytest.mark.breaks("BACKUP-003")
def test_drill_fails_on_a_compose_dump_cut_short(stack: ComposeStack, tmp_path: Path) -> None:
    """A dump whose last bytes are lost (a full disk, a copy cut short), its manifest made to
    agree: its schema restores, with what the drill leaves out of a newer release's, and then
    its rows do not."""
    inventory = _drill_inventory(stack, tmp_path / "backups")
    taken = backup_command("--inventory", str(inventory))
    assert taken.returncode == 0, taken.stderr
    latest = backup.latest_backup(tmp_path / "backups")
    assert latest is not None
    dump = latest.path / "postgres-chatdb.dump"
    dump.write_bytes(dump.read_bytes()[:-64])
    manifest = json.loads((latest.path / "manifest.json").read_text())
    manifest["parts"][dump.name].update(
        size=dump.stat().st_size, sha256=hashlib.sha256(dump.read_bytes()).hexdigest()
    )
    (latest.path / "manifest.json").write_text(json.dumps(manifest))

    run = _drill(stack, inventory, tmp_path / "reports")
    assert run.outcome("BACKUP-002") == "passed", run.output
    row = run.row("BACKUP-003", "chatdb")
    assert row["outcome"] == "failed", run.output
    message = row["message"]
    assert message.startswith(
        f"postgres chatdb: backup {latest.name}: pg_restore of postgres-chatdb.dump"
    ), message
    assert "--section=data --section=post-data" in message, message
    assert message.endswith("pg_restore: error: could not read from input file: end of file"), (
        message
    )
