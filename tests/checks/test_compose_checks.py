"""checks/test_compose.py on a real compose stack: each check passes on the healthy stack, fails
with a clear message on a container that is killed, unhealthy, squeezed, unlimited, logging
errors or stopped, and passes again once the stack is restored.

Needs a Docker API and `docker compose` (scripts/setup-container-engine); skipped, with the
reason, when either is missing. One stack for the module (about 20 s with images cached).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from support import CheckRun, eventually
from test_compose_stack import compose_stack  # one stack per module, built the same way

from opsbook.remediate.runtime import ComposeRuntime, published_ports
from opsbook.sandbox.compose import ComposeStack

pytestmark = pytest.mark.containers

__all__ = ["compose_stack"]  # a fixture, used by name (and imported from here by other modules)

REPO = Path(__file__).resolve().parents[2]
RunCompose = Callable[..., CheckRun]


@pytest.fixture(scope="module")
def runtime(compose_stack: ComposeStack) -> ComposeRuntime:
    from opsbook.inventory import load_inventory

    inventory = load_inventory(compose_stack.inventory_path, environ={})
    assert inventory.compose is not None
    runtime = ComposeRuntime(inventory.compose, published_ports(inventory))
    runtime.stack = compose_stack  # the test's own state dir: OPSBOOK_COMPOSE_DIR
    return runtime


@pytest.fixture
def run_compose(compose_stack: ComposeStack, tmp_path: Path) -> RunCompose:
    """Run the checks suite against the compose stack: `run_compose("--check=COMPOSE-001")`."""
    counter = iter(range(1000))

    def run(
        *args: str, inventory: Path | None = None, env: dict[str, str] | None = None
    ) -> CheckRun:
        reports = tmp_path / f"reports-{next(counter)}"
        selection = [] if any(a.startswith("-m") for a in args) else ["-m", "daily"]
        command = [
            sys.executable, "-m", "pytest", "-q", "-p", "no:randomly",
            f"--inventory={inventory or compose_stack.inventory_path}",
            f"--reports-dir={reports}", *selection, *args,
        ]  # fmt: skip
        environment = {
            k: v for k, v in os.environ.items() if not k.startswith(("OPSBOOK_", "PYTEST_"))
        }
        environment["OPSBOOK_COMPOSE_DIR"] = str(compose_stack.dir)
        # Each test's fixes spend budgets of their own (a stack shared by the module would run
        # out of restarts), and RES-003 does not judge the CI machine's load (tests/conftest.py).
        environment["OPSBOOK__STATE_DIR"] = str(tmp_path / "state")
        environment["OPSBOOK__THRESHOLDS__CPU_PRESSURE_PERCENT"] = "100"
        process = subprocess.run(
            command, cwd=REPO, env={**environment, **(env or {})},
            capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        return CheckRun(process, reports)

    return run


def docker(stack: ComposeStack, *args: str) -> str:
    env = {**os.environ, "DOCKER_HOST": stack.docker_host or ""}
    done = subprocess.run(
        ["docker", *args], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout


def container(stack: ComposeStack, service: str) -> str:
    return f"{stack.project}-{service}-1"


def failed(run: CheckRun, check_id: str, target: str) -> str:
    row = run.row(check_id, target)
    assert row["outcome"] == "failed", f"{check_id}[{target}]: {row['outcome']}\n{run.output}"
    return str(row["message"])


def passed(run: CheckRun, check_id: str, target: str) -> None:
    row = run.row(check_id, target)
    assert row["outcome"] == "passed", f"{check_id}[{target}]: {row}\n{run.output}"


# The backend logs "database check failed" while PostgreSQL initialises during `up`: real error
# lines that COMPOSE-006 reports for 5 minutes after a fresh start. A short window looks past them.
SHORT_LOG_WINDOW = {"OPSBOOK__THRESHOLDS__LOG_WINDOW_S": "5"}


def test_daily_passes_on_the_healthy_stack(run_compose: RunCompose) -> None:
    time.sleep(5)
    run = run_compose("-v", "-v", env=SHORT_LOG_WINDOW)  # -q -v -v: one line per check
    assert run.exit_code == 0, run.output
    # The CPU use runs last: its window between two samples, begun as the run starts, is spent
    # on the other checks rather than waited for.
    ran = [line.split(" ")[0] for line in run.output.splitlines() if line.startswith("checks/")]
    usage = [index for index, node in enumerate(ran) if "::test_use_within_limits[" in node]
    assert usage, ran
    assert usage == list(range(len(ran) - len(usage), len(ran))), ran
    for service in ("backend", "worker", "frontend", "postgres", "redis", "prometheus"):
        passed(run, "COMPOSE-001", service)
        passed(run, "COMPOSE-002", service)
        passed(run, "COMPOSE-006", service)
    passed(run, "COMPOSE-004", "backend")
    passed(run, "COMPOSE-005", "backend")
    passed(run, "COMPOSE-005", "frontend")
    # Published postgres and redis are connected to directly (DB-001, QUEUE-001).
    assert run.outcome("COMPOSE-007", "none") == "skipped"
    assert "reached directly" in run.row("COMPOSE-007", "none")["message"]
    # The dashboard shows each container's use against its limits (the runbook's 2 GiB).
    dashboard = subprocess.run(
        [sys.executable, "-m", "opsbook", "status", "--reports-dir", str(run.reports)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert dashboard.returncode == 0, dashboard.stdout + dashboard.stderr
    backend = [line for line in dashboard.stdout.splitlines()
               if line.lstrip().startswith("container") and "backend" in line]  # fmt: skip
    assert backend, dashboard.stdout
    assert re.search(r"memory \d+ MiB of 2 GiB, CPU [\d.]+ of 2$", backend[0]), backend


@pytest.mark.breaks("COMPOSE-001", "COMPOSE-002")
def test_killed_worker_fails_running_and_kill_checks(
    compose_stack: ComposeStack, runtime: ComposeRuntime, run_compose: RunCompose
) -> None:
    name = container(compose_stack, "worker")
    docker(compose_stack, "kill", name)
    run = run_compose("--check=COMPOSE-001,COMPOSE-002")
    assert run.exit_code == 1
    assert failed(run, "COMPOSE-001", "worker") == (
        f"worker: {name} is exited with exit code 137 (expected all running)"
    )
    assert run.row("COMPOSE-001", "worker")["observed"] == {name: "exited (137)"}
    assert f"{name} was killed: exit code 137, by its memory limit (256 MiB) or SIGKILL" in failed(
        run, "COMPOSE-002", "worker"
    )
    passed(run, "COMPOSE-001", "backend")
    runtime.restart("worker")
    assert runtime.replicas("worker") == 1
    again = run_compose("--check=COMPOSE-001,COMPOSE-002")
    assert again.exit_code == 0, again.output


def _podman_healthcheck(name: str) -> None:
    # The engine here never runs a HEALTHCHECK on a timer; `podman healthcheck run` runs one.
    subprocess.run(["podman", "healthcheck", "run", name], capture_output=True, timeout=30)


@pytest.mark.breaks("COMPOSE-003")
def test_unhealthy_container_fails_health_check(
    compose_stack: ComposeStack, runtime: ComposeRuntime, run_compose: RunCompose
) -> None:
    if shutil.which("podman") is None:
        pytest.skip("the engine is not Podman: its own timer runs the HEALTHCHECK")
    name = container(compose_stack, "worker")
    docker(compose_stack, "exec", name, "rm", "-f", "/tmp/worker.ready")
    for _ in range(4):  # past the default 3 retries
        _podman_healthcheck(name)
    run = run_compose("--check=COMPOSE-003")
    message = failed(run, "COMPOSE-003", "worker")
    assert message.startswith(f"worker: {name} is unhealthy, its last probe said: "), message
    assert message.endswith(" (expected healthy)"), message
    assert run.row("COMPOSE-003", "worker")["observed"] == {name: "unhealthy"}
    runtime.restart("worker")
    eventually(
        lambda: subprocess.run(["podman", "healthcheck", "run", name], timeout=30).returncode == 0,
        "the worker's HEALTHCHECK passes after the restart",
    )
    again = run_compose("--check=COMPOSE-003")
    passed(again, "COMPOSE-003", "worker")


@pytest.mark.breaks("COMPOSE-004")
def test_cpu_and_memory_use_against_limits(
    compose_stack: ComposeStack, run_compose: RunCompose
) -> None:
    name = container(compose_stack, "backend")
    # A busy loop in the backend: one of its 2 CPUs (the runbook's limit) used, 50% against
    # a maximum set at 10% (the loop needs only 0.2 of a core on a machine others keep busy;
    # the idle backend uses about 0.01).
    docker(compose_stack, "exec", "-d", name, "timeout", "12", "python3", "-c", "while 1: pass")
    time.sleep(1.5)
    run = run_compose(
        "--check=COMPOSE-004", env={"OPSBOOK__THRESHOLDS__CONTAINER_CPU_PERCENT": "10"}
    )
    message = failed(run, "COMPOSE-004", "backend")
    assert f"{name} uses " in message, message
    assert "of its 2 CPUs" in message, message
    assert "max 10%" in message, message
    time.sleep(12)
    # Memory: the real usage against a threshold set below it.
    run = run_compose("--check=COMPOSE-004", env={"OPSBOOK__THRESHOLDS__MEMORY_USED_PERCENT": "1"})
    message = failed(run, "COMPOSE-004", "backend")
    assert "of its 2048 MiB memory limit" in message, message
    assert "max 1%" in message, message
    observed = run.row("COMPOSE-004", "backend")["observed"][name]
    assert observed["memory_limit_bytes"] == 2 * 2**30, observed
    assert observed["memory_percent"] > 1, observed
    again = run_compose("--check=COMPOSE-004")
    passed(again, "COMPOSE-004", "backend")


@pytest.mark.breaks("COMPOSE-005")
def test_missing_limits_fail_until_recreated(
    compose_stack: ComposeStack, runtime: ComposeRuntime, run_compose: RunCompose, tmp_path: Path
) -> None:
    override = tmp_path / "no-limits.yaml"
    override.write_text("services:\n  frontend:\n    deploy: !reset {}\n")
    port = str(published_ports_of(compose_stack)["frontend"])
    subprocess.run(
        [
            "docker", "compose", "-p", compose_stack.project, "-f", str(compose_stack.compose_file),
            "-f", str(override), "up", "-d", "--force-recreate", "--no-deps", "frontend",
        ],
        env={**compose_stack._env(), "OPSBOOK_PORT_FRONTEND": port},
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    run = run_compose("--check=COMPOSE-005,HEALTH-001")
    message = failed(run, "COMPOSE-005", "frontend")
    assert message == (
        f"frontend: {container(compose_stack, 'frontend')} has no CPU and no memory limit "
        "(expected deploy.resources.limits cpus and memory, as the runbook's override sets)"
    )
    passed(run, "HEALTH-001", "frontend")  # the recreated container kept the inventory's port
    runtime.recreate("frontend")
    again = run_compose("--check=COMPOSE-005,HEALTH-001")
    assert again.exit_code == 0, again.output


def published_ports_of(stack: ComposeStack) -> dict[str, int]:
    from opsbook.inventory import load_inventory

    return published_ports(load_inventory(stack.inventory_path, environ={}))


@pytest.mark.breaks("COMPOSE-006")
def test_error_lines_in_a_container_log(
    compose_stack: ComposeStack, runtime: ComposeRuntime, run_compose: RunCompose
) -> None:
    name = container(compose_stack, "worker")
    line = "2026-01-01 00:00:00,000 ERROR worker: opsbook test: lost the database connection"
    time.sleep(5)
    window = {"OPSBOOK__THRESHOLDS__LOG_WINDOW_S": "5"}
    docker(compose_stack, "exec", name, "sh", "-c", f"echo '{line}' > /proc/1/fd/1")
    run = run_compose("--check=COMPOSE-006", env=window)
    message = failed(run, "COMPOSE-006", "worker")
    assert message == (
        f"worker: {name}: 1 error line in the last 5s, the last: {line} (expected no error line)"
    )
    assert run.row("COMPOSE-006", "worker")["observed"] == 1
    assert run.row("COMPOSE-006", "worker")["unit"] == "count"
    passed(run, "COMPOSE-006", "backend")
    runtime.recreate("worker")  # a new container, a new log
    again = run_compose("--check=COMPOSE-006", env=window)
    assert again.exit_code == 0, again.output


@pytest.mark.breaks("COMPOSE-007")
def test_exec_probes_where_postgres_and_redis_are_not_published(
    compose_stack: ComposeStack, runtime: ComposeRuntime, run_compose: RunCompose, tmp_path: Path
) -> None:
    raw = yaml.safe_load(compose_stack.inventory_path.read_text())
    del raw["postgres"], raw["redis"]
    raw.pop("credentials", None)  # the application's passwords name those targets
    for service in ("postgres", "redis"):  # the services no longer serve those targets
        raw.get("services", {}).get(service, {}).pop("targets", None)
    unpublished = tmp_path / "unpublished.yaml"
    unpublished.write_text(yaml.safe_dump(raw))
    run = run_compose("--check=COMPOSE-007", inventory=unpublished)
    assert run.exit_code == 0, run.output
    assert run.row("COMPOSE-007", "postgres")["observed"].endswith("accepting connections")
    assert run.row("COMPOSE-007", "redis")["observed"].startswith("NOAUTH")
    docker(compose_stack, "stop", "--time", "5", container(compose_stack, "redis"))
    try:
        run = run_compose("--check=COMPOSE-007", inventory=unpublished)
        assert failed(run, "COMPOSE-007", "redis") == (
            "redis: no running container to run `redis-cli ping` in (expected one)"
        )
        passed(run, "COMPOSE-007", "postgres")
    finally:
        runtime.restart("redis")
    again = run_compose("--check=COMPOSE-007", inventory=unpublished)
    assert again.exit_code == 0, again.output


def test_compose_checks_skip_without_a_compose_section(
    compose_stack: ComposeStack, run_compose: RunCompose, tmp_path: Path
) -> None:
    raw = yaml.safe_load(compose_stack.inventory_path.read_text())
    del raw["compose"]
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(raw))
    run = run_compose("-m", "compose", inventory=plain)
    assert run.exit_code == 0, run.output
    outcomes = {key: outcome for key, outcome in run.outcomes().items()}
    assert set(outcomes.values()) == {"skipped"}, outcomes
    assert "the inventory has no compose section" in run.row("COMPOSE-001", "none")["message"]
