"""The compose stack (compose.yaml, containers/) on a real container engine.

Needs a Docker API (Docker, or Podman's: `scripts/setup-container-engine`) and the
`docker compose` plugin; skipped, with the reason, when either is missing. The first run builds
the images (about a minute); later runs reuse them.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import requests
from alert_rules_support import jobs_without_memory_limit, missing_series
from support import eventually

from opsbook import yamltext
from opsbook.compose import COMPOSE_FILE, default_docker_host
from opsbook.inventory import Inventory, load_inventory
from opsbook.sandbox.compose import SCRAPED, SERVICES, ComposeStack
from opsbook.sandbox.prometheus import compose_memory_limits

pytestmark = pytest.mark.containers

TIMEOUT_S = 3.0
SETUP = "run scripts/setup-container-engine and export the DOCKER_HOST it prints"


def _docker_env(docker_host: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if docker_host:
        env["DOCKER_HOST"] = docker_host
    return env


def _engine_problem(docker_host: str | None) -> str | None:
    """Why the stack cannot run here, or None (asked through the docker CLI, as compose is)."""
    where = docker_host or "the default DOCKER_HOST"
    for argv, missing in (
        (["docker", "version", "--format", "{{.Server.Version}}"], f"no engine answers at {where}"),
        (["docker", "compose", "version"], "the docker compose v2 plugin is missing"),
    ):
        try:
            subprocess.run(
                argv, env=_docker_env(docker_host), capture_output=True, check=True, timeout=15
            )
        except (OSError, subprocess.SubprocessError):
            return f"{missing}: {SETUP}"
    return None


@pytest.fixture(scope="module")
def compose_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    docker_host = default_docker_host()
    problem = _engine_problem(docker_host)
    if problem:
        pytest.skip(problem)
    stack = ComposeStack(tmp_path_factory.mktemp("compose"), docker_host=docker_host)
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="module")
def compose_inventory(compose_stack: ComposeStack) -> Inventory:
    return load_inventory(compose_stack.inventory_path, environ={})


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        return response.status, response.read()


def test_stack_comes_up(compose_stack: ComposeStack, compose_inventory: Inventory) -> None:
    statuses = {s.name: s for s in compose_stack.status()}
    stopped = [name for name in SERVICES if not statuses[name].running]
    assert not stopped, f"services not running: {stopped}"
    assert compose_inventory.compose is not None
    assert compose_inventory.compose.project == compose_stack.project
    assert compose_inventory.sandbox is None  # remediation must not take it for native processes
    services = {ep.service for ep in compose_inventory.http.values()}
    assert services == {"backend", "frontend", "prometheus"}
    assert compose_inventory.postgres["chatdb"].service == "postgres"
    assert compose_inventory.redis["queue"].service == "redis"


def test_ports_published_on_loopback_only(compose_stack: ComposeStack) -> None:
    out = compose_stack.compose("ps", "--format", "json")
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    published = [
        (entry["Service"], p["URL"], p["PublishedPort"])
        for entry in entries
        for p in entry.get("Publishers") or []
        if p.get("PublishedPort")
    ]
    assert published, "no port is published"
    wide = [item for item in published if item[1] != "127.0.0.1"]
    assert not wide, f"published beyond 127.0.0.1: {wide}"


def test_backend_health_through_published_port(compose_inventory: Inventory) -> None:
    backend = compose_inventory.http["backend"]
    status, body = _get(backend.url + "/health")
    assert status == 200, f"{backend.url}/health: ({status}) == 200"
    assert json.loads(body) == {"status": "ok", "database": "ok", "redis": "ok"}
    frontend = compose_inventory.http["frontend"]
    status, _ = _get(frontend.url + "/health")
    assert status == 200, f"{frontend.url}/health: ({status}) == 200"


def test_posted_message_reaches_postgres(compose_inventory: Inventory) -> None:
    frontend = compose_inventory.http["frontend"]
    content = f"compose test {uuid.uuid4()}"
    request = urllib.request.Request(
        frontend.url + "/api/messages",
        data=json.dumps({"content": content, "user_id": "compose-test"}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        assert response.status == 202, f"POST /api/messages: ({response.status}) == 202"
        message_id = json.loads(response.read())["id"]
    pg = compose_inventory.postgres["chatdb"]
    assert pg.password is not None
    deadline = time.monotonic() + 15
    stored = None
    while stored is None and time.monotonic() < deadline:
        with psycopg.connect(
            host=pg.host, port=pg.port, dbname=pg.database, user=pg.user,
            password=pg.password.reveal(), connect_timeout=3,
        ) as conn:  # fmt: skip
            row = conn.execute("SELECT content FROM messages WHERE id = %s", (message_id,))
            stored = row.fetchone()
        if stored is None:
            time.sleep(0.2)
    assert stored == (content,), f"message {message_id} in PostgreSQL: {stored} == ({content!r},)"


def test_alert_rules_select_existing_series(compose_inventory: Inventory) -> None:
    """Every series the alert rules select exists in the stack's Prometheus, but opsbook's run
    metrics (no run reports to it: no Pushgateway on compose; their absence is what
    OpsbookRunMissing reports), and HighMemoryUsage compares each job with the memory limit
    the compose file makes the engine enforce."""
    url = compose_inventory.http["prometheus"].url.rstrip("/")

    def scraped() -> bool:
        """every series of the rules but opsbook's run metrics (scraped, rules evaluated)"""
        return all(m.startswith("opsbook_last_run_") for m in missing_series(url))

    eventually(scraped, deadline_s=30)
    assert jobs_without_memory_limit(url) == set()
    answer = requests.get(
        f"{url}/api/v1/query", {"query": "job:memory_limit_bytes"}, timeout=TIMEOUT_S
    ).json()
    recorded = {s["metric"]["job"]: int(s["value"][1]) for s in answer["data"]["result"]}
    compose = yamltext.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert recorded == compose_memory_limits(compose, SCRAPED)


def test_down_leaves_no_container(compose_stack: ComposeStack) -> None:
    compose_stack.down()
    out = subprocess.run(
        [
            "docker", "ps", "--all", "--quiet",
            "--filter", f"label=com.docker.compose.project={compose_stack.project}",
        ],
        env=_docker_env(compose_stack.docker_host),
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    assert out.strip() == "", f"containers left after down: {out.split()}"
    assert not any(s.running for s in compose_stack.status())
