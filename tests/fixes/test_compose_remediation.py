"""Remediation on a real compose stack, through ComposeRuntime: a stopped backend restarted by
`pytest -m daily --remediate=apply --allow=restart`, a backend killed by a tiny memory limit
brought back by the escalation to a recreate, the backend scaled to 3 and back, and the queue's
scale_workers run on the compose project.

Needs a Docker API and `docker compose`; skipped, with the reason, when either is missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import msgspec
import pytest
import redis
import requests
import yaml
from test_compose_checks import (  # one stack per module, built the same way
    SHORT_LOG_WINDOW,
    compose_stack,
    container,
    docker,
    eventually,
    failed,
    passed,
    run_compose,
    runtime,
)

from opsbook.inventory import load_inventory
from opsbook.remediate.context import Context
from opsbook.remediate.runtime import ComposeRuntime
from opsbook.remediation import queue
from opsbook.sandbox.compose import ComposeStack

pytestmark = pytest.mark.containers

__all__ = ["compose_stack", "run_compose", "runtime"]  # fixtures, used by name


def attempt(run, check_id: str, target: str) -> dict[str, object]:
    return run.row(check_id, target).get("remediation_attempt") or {}


def test_plan_shows_the_exact_compose_commands(
    compose_stack: ComposeStack, runtime: ComposeRuntime, run_compose
) -> None:
    docker(compose_stack, "stop", "--time", "5", container(compose_stack, "backend"))
    try:
        run = run_compose("--check=HEALTH-001", "--remediate=plan")
        plan = attempt(run, "HEALTH-001", "backend")
        assert plan["status"] == "planned", run.output
        base = (
            f"DOCKER_HOST={compose_stack.docker_host} docker compose -p {compose_stack.project} "
            f"-f {compose_stack.compose_file}"
        )
        port = runtime.ports["backend"]
        assert plan["plan"] == [
            f"[restart] restart backend: {base} restart backend",
            f"[recreate] recreate backend (only if backend is still unhealthy): "
            f"DOCKER_HOST={compose_stack.docker_host} OPSBOOK_COMPOSE_DIR={compose_stack.dir} "
            f"OPSBOOK_PORT_BACKEND={port} docker compose -p {compose_stack.project} "
            f"-f {compose_stack.compose_file} up --detach --force-recreate --no-deps backend",
        ], plan
        assert not runtime.is_running("backend")  # planning changed nothing
    finally:
        runtime.restart("backend")


@pytest.mark.breaks("COMPOSE-001")
@pytest.mark.fixes("COMPOSE-001")
def test_stopped_backend_is_restarted_by_the_daily_run(
    compose_stack: ComposeStack, runtime: ComposeRuntime, run_compose
) -> None:
    docker(compose_stack, "stop", "--time", "5", container(compose_stack, "backend"))
    run = run_compose("--remediate=apply", "--allow=restart", env=SHORT_LOG_WINDOW)
    # COMPOSE-001 runs first and is linked to restart_service: it sees the container exited
    # and restarts it; the checks after it find the backend answering again.
    row = run.row("COMPOSE-001", "backend")
    assert row["outcome"] == "fixed", run.output
    assert "is exited" in row["message"]
    fixed = row["remediation_attempt"]
    assert (fixed["status"], fixed["verdict"]) == ("applied", "FIXED"), run.output
    assert fixed["plan"][0].endswith("restart backend -> healthy"), fixed
    assert run.outcome("HEALTH-001", "backend") in ("passed", "fixed")
    again = run_compose(env=SHORT_LOG_WINDOW)
    passed(again, "COMPOSE-001", "backend")
    passed(again, "HEALTH-001", "backend")


def _squeeze_backend(stack: ComposeStack, runtime: ComposeRuntime, tmp_path: Path) -> None:
    """Recreate the backend with a 16 MiB memory limit (no swap): it is killed as it starts."""
    override = tmp_path / "tiny-memory.yaml"
    override.write_text(
        "services:\n  backend:\n    memswap_limit: 16M\n"
        # The reservation under the limit too: the engine refuses one above it (compose.yaml
        # reserves the runbook's 1G).
        "    deploy: {resources: {limits: {cpus: '0.50', memory: 16M}, "
        "reservations: {memory: 8M}}}\n"
    )
    subprocess.run(
        [
            "docker", "compose", "-p", stack.project, "-f", str(stack.compose_file),
            "-f", str(override), "up", "-d", "--force-recreate", "--no-deps", "backend",
        ],
        env={**stack._env(), "OPSBOOK_PORT_BACKEND": str(runtime.ports["backend"])},
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip


@pytest.mark.breaks("COMPOSE-001", "COMPOSE-002")
def test_memory_squeezed_backend_is_recreated(
    compose_stack: ComposeStack, runtime: ComposeRuntime, run_compose, tmp_path: Path
) -> None:
    _squeeze_backend(compose_stack, runtime, tmp_path)
    name = container(compose_stack, "backend")
    eventually(lambda: not runtime.is_running("backend"), "the squeezed backend is killed")
    run = run_compose("--check=COMPOSE-002,COMPOSE-001")
    message = failed(run, "COMPOSE-002", "backend")
    assert f"{name} was killed: exit code 137, by its memory limit (16 MiB) or SIGKILL" in message
    assert f"{name} is exited with exit code 137" in failed(run, "COMPOSE-001", "backend")
    # A restart keeps the tiny limit and dies again; the recreate restores compose.yaml's.
    run = run_compose(
        "--check=HEALTH-001", "--remediate=apply", "--allow=restart,recreate",
        env=SHORT_LOG_WINDOW,
    )  # fmt: skip
    fixed = attempt(run, "HEALTH-001", "backend")
    assert (fixed["status"], fixed["verdict"]) == ("applied", "FIXED"), run.output
    assert fixed["plan"][0].endswith("-> still unhealthy"), fixed
    assert fixed["plan"][1].endswith("up --detach --force-recreate --no-deps backend -> done")
    again = run_compose("--check=COMPOSE-001,COMPOSE-002,COMPOSE-005,HEALTH-001")
    assert again.exit_code == 0, again.output
    limits = again.row("COMPOSE-005", "backend")["observed"][name]
    assert limits["memory_bytes"] == 2 * 2**30, limits  # compose.yaml's (the runbook's)


@pytest.mark.fixes("COMPOSE-002")
def test_killed_worker_is_restarted(
    compose_stack: ComposeStack, runtime: ComposeRuntime, run_compose
) -> None:
    name = container(compose_stack, "worker")
    docker(compose_stack, "kill", name)
    eventually(lambda: not runtime.is_running("worker"), "the worker is killed")
    run = run_compose("--check=COMPOSE-002", "--remediate=apply", "--allow=restart")
    fixed = attempt(run, "COMPOSE-002", "worker")
    assert (fixed["status"], fixed["verdict"]) == ("applied", "FIXED"), run.output
    assert fixed["plan"][0].startswith(f"[restart] restart worker ({name} is exited (137)): "), (
        fixed
    )
    assert fixed["plan"][0].endswith("restart worker -> healthy"), fixed
    assert runtime.replicas("worker") == 1


class HealthcheckTimer:
    """Runs the worker's HEALTHCHECK every second, as Docker's own timer would: Podman without
    systemd never runs one by itself (`podman healthcheck run NAME` does)."""

    def __init__(self, name: str) -> None:
        self.name, self.stopping = name, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stopping.wait(1.0):
            subprocess.run(
                ["podman", "healthcheck", "run", self.name], capture_output=True, timeout=30
            )

    def __enter__(self) -> HealthcheckTimer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=40)


@pytest.mark.fixes("COMPOSE-003")
def test_unhealthy_worker_is_restarted(
    compose_stack: ComposeStack, runtime: ComposeRuntime, run_compose
) -> None:
    if shutil.which("podman") is None:
        pytest.skip("the engine is not Podman: its own timer runs the HEALTHCHECK")
    name = container(compose_stack, "worker")
    with HealthcheckTimer(name):
        # The worker's HEALTHCHECK tests its ready file: gone, the container turns unhealthy.
        docker(compose_stack, "exec", name, "rm", "-f", "/tmp/worker.ready")

        def unhealthy() -> bool:
            health = docker(compose_stack, "inspect", "-f", "{{.State.Health.Status}}", name)
            return health.strip() == "unhealthy"

        eventually(unhealthy, "the worker is reported unhealthy", deadline_s=60)
        run = run_compose(
            "--check=COMPOSE-003", "--remediate=apply", "--allow=restart,recreate",
            env=SHORT_LOG_WINDOW,
        )  # fmt: skip
    fixed = attempt(run, "COMPOSE-003", "worker")
    assert (fixed["status"], fixed["verdict"]) == ("applied", "FIXED"), run.output
    assert fixed["plan"][0].startswith(f"[restart] restart worker ({name} is unhealthy): "), fixed


@pytest.mark.fixes("OBS-002")
def test_scrape_target_down_has_its_compose_service_restarted(
    compose_stack: ComposeStack, runtime: ComposeRuntime, run_compose
) -> None:
    docker(compose_stack, "stop", "--time", "5", container(compose_stack, "backend"))
    prometheus = load_inventory(compose_stack.inventory_path, environ={}).http["prometheus"]

    def backend_scraped(value: str) -> bool:
        answer = requests.get(
            f"{prometheus.url}/api/v1/query", params={"query": 'up{job="backend"}'}, timeout=3
        ).json()
        return [s["value"][1] for s in answer["data"]["result"]] == [value]

    try:
        eventually(lambda: backend_scraped("0"), "Prometheus scraped the stopped backend")
        run = run_compose("--check=OBS-002", "--remediate=apply", "--allow=restart")
    finally:
        runtime.restart("backend")
    fixed = attempt(run, "OBS-002", "prometheus")
    assert (fixed["status"], fixed["verdict"]) == ("applied", "FIXED"), run.output
    (step,) = fixed["plan"]
    assert step.startswith(
        "[restart] restart backend: scrape target backend/backend:8000 is down"
    ), step
    assert step.endswith(" restart backend -> answers, scraped up"), step


@pytest.mark.fixes("COMPOSE-007")
def test_unpublished_redis_stopped_is_restarted(
    compose_stack: ComposeStack, runtime: ComposeRuntime, run_compose, tmp_path: Path
) -> None:
    raw = yaml.safe_load(compose_stack.inventory_path.read_text())
    del raw["postgres"], raw["redis"]
    raw.pop("credentials", None)  # the application's passwords name those targets
    for service in ("postgres", "redis"):  # the services no longer serve those targets
        raw.get("services", {}).get(service, {}).pop("targets", None)
    unpublished = tmp_path / "unpublished.yaml"
    unpublished.write_text(yaml.safe_dump(raw))
    docker(compose_stack, "stop", "--time", "5", container(compose_stack, "redis"))
    try:
        run = run_compose(
            "--check=COMPOSE-007", "--remediate=apply", "--allow=restart", inventory=unpublished,
            env=SHORT_LOG_WINDOW,
        )  # fmt: skip
    finally:
        runtime.restart("redis")  # whatever the fix did, the next test finds Redis running
    fixed = attempt(run, "COMPOSE-007", "redis")
    assert (fixed["status"], fixed["verdict"]) == ("applied", "FIXED"), run.output
    assert fixed["plan"][0].endswith("restart redis -> healthy"), fixed


def test_backend_scales_to_three_and_back(
    compose_stack: ComposeStack, runtime: ComposeRuntime, run_compose
) -> None:
    try:
        runtime.scale("backend", 3)
        assert runtime.replicas("backend") == 3
        out = compose_stack.compose("ps", "--format", "json", "backend")
        ports = [
            (p["URL"], p["PublishedPort"])
            for entry in (json.loads(line) for line in out.splitlines() if line.strip())
            for p in entry.get("Publishers") or []
            if p.get("PublishedPort")
        ]
        assert len({port for _, port in ports}) == 3, ports
        assert {url for url, _ in ports} == {"127.0.0.1"}, ports
        assert ("127.0.0.1", runtime.ports["backend"]) in ports  # the first kept its port
        run = run_compose("--check=COMPOSE-001,HEALTH-001")
        assert run.exit_code == 0, run.output
        states = run.row("COMPOSE-001", "backend")["observed"]
        assert list(states.values()) == ["running"] * 3, states
    finally:
        runtime.scale("backend", 1)
    assert runtime.replicas("backend") == 1
    again = run_compose("--check=COMPOSE-001,HEALTH-001")
    assert again.exit_code == 0, again.output


def test_scale_workers_runs_on_the_compose_project(
    compose_stack: ComposeStack, runtime: ComposeRuntime
) -> None:
    inventory = load_inventory(compose_stack.inventory_path, environ={})
    low = msgspec.structs.replace(inventory.thresholds, queue_backlog=10)
    inventory = msgspec.structs.replace(inventory, thresholds=low)
    ctx = Context(inventory, "QUEUE-003", "redis", "queue", _runtime=runtime)
    spec = inventory.redis["queue"]
    admin_password = spec.admin.password.resolve().reveal()
    port = int(spec.url.rsplit(":", 1)[1].split("/")[0])
    client = redis.Redis(
        host="127.0.0.1", port=port, username="default", password=admin_password,
        socket_timeout=5, decode_responses=True,
    )  # fmt: skip
    docker(compose_stack, "stop", "--time", "5", container(compose_stack, "worker"))
    try:
        tag = f"compose scale {uuid.uuid4()}"
        pipe = client.pipeline(transaction=False)
        for _ in range(50):
            pipe.lpush(
                "message_queue",
                json.dumps({
                    "id": str(uuid.uuid4()), "conversation_id": None, "user_id": "opsbook-test",
                    "role": "user", "content": tag, "enqueued_at": time.time(),
                }),
            )  # fmt: skip
        pipe.execute()
        plan = queue.scale_workers(ctx, apply=False)
        assert plan.lines()[0].startswith(
            "[scale] scale worker from 0 to 3: message_queue holds 50 (max 10): "
        ), plan.lines()
        assert "--scale worker=3 worker" in plan.lines()[0]
        done = queue.scale_workers(ctx, apply=True)
        assert done.steps[0].result == "3 workers run", done.lines()
        assert done.steps[1].result == "1 worker runs", done.lines()
        assert client.llen("message_queue") == 0
        assert runtime.replicas("worker") == 1
    finally:
        client.close()
        runtime.scale("worker", 1)


def test_a_starting_worker_replica_leaves_another_ones_messages_in_flight(
    compose_stack: ComposeStack, runtime: ComposeRuntime
) -> None:
    """Replicas share a command line: each takes its container's name for its in-flight list,
    so a replica that starts (and recovers its own list) never requeues what another holds.
    (When they all ran as `worker`, the runbook's message_queue:processing was everyone's.)"""
    spec = load_inventory(compose_stack.inventory_path, environ={}).redis["queue"]
    port = int(spec.url.rsplit(":", 1)[1].split("/")[0])
    client = redis.Redis(
        host="127.0.0.1", port=port, username="default",
        password=spec.admin.password.resolve().reveal(), socket_timeout=5, decode_responses=True,
    )  # fmt: skip
    first = docker(compose_stack, "inspect", "-f", "{{.Config.Hostname}}",
                   container(compose_stack, "worker")).strip()  # fmt: skip
    held = {
        key: f"held in flight in {key} {uuid.uuid4()}"
        for key in ("message_queue:processing", f"message_queue:processing:{first}")
    }
    for key, message in held.items():
        client.lpush(key, message)
    second = container(compose_stack, "worker").removesuffix("-1") + "-2"

    def second_replica_ready() -> bool:
        try:
            docker(compose_stack, "exec", second, "test", "-f", "/tmp/worker.ready")
        except subprocess.CalledProcessError:
            return False
        return True

    try:
        runtime.scale("worker", 2)
        eventually(second_replica_ready)
        for key, message in held.items():
            assert client.lrange(key, 0, -1) == [message], f"{key} lost what it held"
        assert not set(held.values()) & set(client.lrange("message_queue", 0, -1))
    finally:
        for key, message in held.items():
            client.lrem(key, 0, message)
        client.close()
        runtime.scale("worker", 1)


def test_maintenance_mode_on_a_compose_stack(
    compose_stack: ComposeStack, run_compose, tmp_path: Path
) -> None:
    """`opsbook maintenance on|off` on a compose inventory: nginx serves its maintenance page
    through its real config inside the frontend's container, and the site again after."""
    inventory = load_inventory(compose_stack.inventory_path, environ={})
    health = inventory.http["frontend"].url.rstrip("/") + "/health"

    def maintenance(action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                *(sys.executable, "-m", "opsbook", "maintenance", action),
                *("--inventory", str(compose_stack.inventory_path)),
                *("--reports-dir", str(tmp_path)),
            ],
            env={**compose_stack._env(), "OPSBOOK__STATE_DIR": str(tmp_path / "state")},
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    try:
        on = maintenance("on")
        assert on.returncode == 0, on.stdout + on.stderr
        assert "frontend /health answers 503" in on.stdout
        assert requests.get(health, timeout=5).status_code == 503
        assert run_compose("--check=HEALTH-001").outcome("HEALTH-001", "frontend") == "skipped"
        again = maintenance("on")
        assert "already on (frontend serves the page)" in again.stdout, again.stdout
    finally:
        off = maintenance("off")
    assert off.returncode == 0, off.stdout + off.stderr
    assert requests.get(health, timeout=5).status_code == 200


def test_incident_bundle_holds_the_containers_logs(
    compose_stack: ComposeStack, tmp_path: Path
) -> None:
    """`opsbook incident collect` on a compose inventory: each container's log of the last
    24 hours is in the bundle (the runbook's `docker-compose logs`), listed in its manifest."""
    out = tmp_path / "incident"
    done = subprocess.run(
        [sys.executable, "-m", "opsbook", "incident", "collect",
         "--inventory", str(compose_stack.inventory_path), "--out", str(out)],
        env=compose_stack._env(), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    files = {entry["path"] for entry in manifest["files"]}
    backend = f"containers/{container(compose_stack, 'backend')}.log"
    assert backend in files, sorted(files)
    assert (out / backend).stat().st_size > 0
