"""The whole restore on a real compose stack: the writers stopped and started as containers,
the queue lists restored through Redis's own protocol (its data directory is inside its
container), and nginx in front of the backend reloaded so that the canary gets through.

Needs a Docker API and the compose plugin (skipped with the reason otherwise), like
tests/test_compose_stack.py; one stack for the module.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from test_backup import backup_command
from test_compose_stack import _engine_problem

from opsbook.canary import admin_client, admin_connection
from opsbook.compose import default_docker_host
from opsbook.inventory import load_inventory
from opsbook.sandbox.compose import ComposeStack

pytestmark = pytest.mark.containers

WRITERS = ("backend", "worker")


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
    assert "[restore] reload frontend, in front of backend" in done.stdout, done.stdout
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
