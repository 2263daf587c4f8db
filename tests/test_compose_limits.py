"""The runbook's resource limits on a real compose stack: what the engine applies (NanoCpus,
Memory, MemoryReservation), COMPOSE-008 passing on the healthy stack and failing on a backend
recreated with lower limits, its fix writing the stack's override file and recreating the
backend (FIXED), SEC-080 not applicable to the Python backend, and COMPOSE-008 not applicable
on the native sandbox.

Needs a Docker API and `docker compose` for the stack; skipped, with the reason, when either is
missing. One stack for the module (about 20 s with images cached).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml
from support import CheckRun
from test_compose_checks import (  # one stack per module, built the same way
    compose_stack,
    container,
    docker,
    failed,
    passed,
    run_compose,
    runtime,
)

from opsbook import yamltext
from opsbook.compose import COMPOSE_FILE
from opsbook.inventory import Limits, load_inventory
from opsbook.remediate.runtime import ComposeRuntime
from opsbook.sandbox.compose import RUNBOOK_LIMITS, ComposeStack

__all__ = ["compose_stack", "run_compose", "runtime"]  # fixtures, used by name

REPO = Path(__file__).resolve().parents[1]
GIB, MIB = 2**30, 2**20
BACKEND = {"cpus": 2.0, "memory_limit_bytes": 2 * GIB, "memory_reservation_bytes": GIB}
FRONTEND = {"cpus": 1.0, "memory_limit_bytes": GIB, "memory_reservation_bytes": 512 * MIB}
# Someone's override that shrinks the backend (as the compose file once did), with a pids limit
# of its own that the fix must keep.
SHRUNK = """\
services:
  backend:
    deploy:
      resources:
        limits: {cpus: "0.50", memory: 256M, pids: 100}
        reservations: {memory: 128M}
"""


def host_config(stack: ComposeStack, service: str) -> dict[str, int]:
    fields = ("NanoCpus", "Memory", "MemoryReservation", "PidsLimit")
    shown = docker(stack, "inspect", "--format", "{{json .HostConfig}}", container(stack, service))
    config = json.loads(shown)
    return {name: int(config.get(name) or 0) for name in fields}


@pytest.mark.containers
def test_engine_applies_the_runbook_limits_and_the_checks_pass(
    compose_stack: ComposeStack, run_compose
) -> None:
    """Podman's Docker API applies compose's limits and memory reservations (a CPU reservation
    has no engine setting outside Swarm: compose.yaml sets none)."""
    assert host_config(compose_stack, "backend") == {
        "NanoCpus": 2 * 10**9, "Memory": 2 * GIB, "MemoryReservation": GIB, "PidsLimit": 128,
    }  # fmt: skip
    assert host_config(compose_stack, "frontend") == {
        "NanoCpus": 10**9, "Memory": GIB, "MemoryReservation": 512 * MIB, "PidsLimit": 64,
    }  # fmt: skip
    inventory = load_inventory(compose_stack.inventory_path, environ={})
    assert inventory.services["backend"].limits == Limits(
        cpus=2, memory="2G", memory_reservation="1G"
    )
    assert inventory.services["frontend"].limits == Limits(
        cpus=1, memory="1G", memory_reservation="512M"
    )
    assert inventory.compose is not None
    assert inventory.compose.override == compose_stack.dir / "compose.override.yaml"
    run = run_compose("--check=COMPOSE-008,COMPOSE-005")
    assert run.exit_code == 0, run.output
    for service, expected in (("backend", BACKEND), ("frontend", FRONTEND)):
        passed(run, "COMPOSE-008", service)
        row = run.row("COMPOSE-008", service)
        assert row["observed"] == {container(compose_stack, service): expected}, row
    assert run.row("COMPOSE-008", "backend")["expected"] == (
        "2 CPUs, memory limit 2 GiB, memory reservation 1 GiB: services.backend.limits"
    )
    # NODE_OPTIONS' heap is a Node.js setting: the Python backend and nginx are not judged.
    audit = run_compose("-m", "audit", "--check=SEC-080")
    for service, runs in (
        ("backend", "python3 -m chatapp.backend"),
        ("frontend", "/usr/local/bin/nginx-entrypoint nginx -g"),
    ):
        row = audit.row("SEC-080", service)
        assert row["outcome"] == "skipped", audit.output
        assert row["message"].endswith(
            f"not applicable: {service} is not a Node service (it runs {runs})"
        ), row


def address(stack: ComposeStack, service: str) -> str:
    shown = "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}"
    return docker(stack, "inspect", "--format", shown, container(stack, service)).strip()


# What nginx logs when it sends a request to an address where no backend listens any more.
UPSTREAM_ERRORS = ("upstream timed out", "connect() failed", "could not be resolved", "[error]")


@pytest.mark.containers
def test_recreated_backend_is_reached_through_nginx_without_a_reload(
    compose_stack: ComposeStack, runtime: ComposeRuntime, run_compose
) -> None:
    """nginx looks the backend's name up at request time (containers/nginx: a resolver written
    from the container's /etc/resolv.conf): after the backend is recreated with a new address,
    /api passes through the frontend to the new container with no reload, and neither the
    deploy's wait (wait_proxying) nor the requests leave upstream error lines (COMPOSE-006)."""
    from opsbook.deploy import wait_proxying

    inventory = load_inventory(compose_stack.inventory_path, environ={})
    frontend, backend = inventory.http["frontend"], inventory.http["backend"]
    name = container(compose_stack, "frontend")
    started = docker(compose_stack, "inspect", "--format", "{{.State.StartedAt}}", name)
    since = str(int(time.time()) - 1)
    # Through nginx before the recreate: it has looked up (and caches) the old address.
    posted = requests.post(
        frontend.url + "/api/messages", json={"content": "recreate", "user_id": "t"}, timeout=5
    )
    assert posted.status_code == 202, posted.text
    path = f"/api/messages/{posted.json()['id']}?through=nginx"
    before = address(compose_stack, "backend")
    runtime.recreate("backend")
    after = address(compose_stack, "backend")
    assert after != before, f"backend's address: {after} (before: {before}), expected a new one"

    wait_proxying(inventory, ["frontend"])
    direct = requests.get(backend.url + path, timeout=5)
    proxied = requests.get(frontend.url + path, timeout=5)
    assert (proxied.status_code, proxied.json()) == (direct.status_code, direct.json()), (
        f"GET {path} through the frontend: ({proxied.status_code}) {proxied.text} == "
        f"({direct.status_code}) {direct.text} from the backend"
    )
    assert direct.status_code == 200, direct.text

    logged = subprocess.run(
        ["docker", "logs", "--since", since, name],
        env={**os.environ, "DOCKER_HOST": compose_stack.docker_host or ""},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    lines = (logged.stdout + logged.stderr).splitlines()
    errors = [line for line in lines if any(e in line for e in UPSTREAM_ERRORS)]
    assert errors == [], f"{name}: upstream error lines (expected none): {errors}"
    assert not [line for line in lines if "reconfiguring" in line], f"{name} was reloaded"
    now = docker(compose_stack, "inspect", "--format", "{{.State.StartedAt}}", name)
    assert now == started, f"{name} was restarted"
    run = run_compose("--check=COMPOSE-006")
    passed(run, "COMPOSE-006", "frontend")


def _compose(stack: ComposeStack, runtime: ComposeRuntime, *args: str) -> None:
    env = {**stack._env(), "OPSBOOK_PORT_BACKEND": str(runtime.ports["backend"])}
    subprocess.run(
        ["docker", "compose", "-p", stack.project, *stack.file_arguments(), *args],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip


def attempt(run: CheckRun, check_id: str, target: str) -> dict[str, object]:
    return run.row(check_id, target).get("remediation_attempt") or {}


@pytest.mark.containers
@pytest.mark.breaks("COMPOSE-008")
@pytest.mark.fixes("COMPOSE-008")
def test_shrunk_backend_fails_and_the_override_fix_restores_the_limits(
    compose_stack: ComposeStack, runtime: ComposeRuntime, run_compose
) -> None:
    override = compose_stack.override_file
    assert override is not None
    name = container(compose_stack, "backend")
    override.write_text(SHRUNK)
    try:
        _compose(compose_stack, runtime, "up", "-d", "--force-recreate", "--no-deps", "backend")
        assert host_config(compose_stack, "backend")["Memory"] == 256 * MIB
        run = run_compose("--check=COMPOSE-008")
        assert run.exit_code == 1, run.output
        assert failed(run, "COMPOSE-008", "backend") == (
            f"backend: {name} runs with 0.5 CPUs, memory limit 256 MiB, memory reservation "
            "128 MiB (expected 2 CPUs, memory limit 2 GiB, memory reservation 1 GiB: "
            "services.backend.limits)"
        )
        passed(run, "COMPOSE-008", "frontend")
        # A recreate is risky: without --allow=recreate nothing is written or recreated.
        refused = run_compose("--check=COMPOSE-008", "--remediate=apply")
        assert attempt(refused, "COMPOSE-008", "backend")["status"] == "refused", refused.output
        assert override.read_text() == SHRUNK
        run = run_compose(
            "--check=COMPOSE-008,HEALTH-001,HEALTH-004", "--remediate=apply", "--allow=recreate"
        )
        fixed = attempt(run, "COMPOSE-008", "backend")
        assert run.outcome("COMPOSE-008", "backend") == "fixed", run.output
        assert (fixed["status"], fixed["verdict"]) == ("applied", "FIXED"), run.output
        (step,) = fixed["plan"]
        assert f"-f {compose_stack.compose_file} -f {override} up --detach --force-recreate" in (
            step
        ), step
        assert step.endswith("--no-deps backend -> recreated, answers"), step
        # Not reloaded, the frontend (nginx) passes the public path on to the new container.
        assert run.outcome("HEALTH-004", "frontend") == "passed", run.output
        written = yamltext.safe_load(override.read_text())
        assert written["services"]["backend"]["deploy"]["resources"] == {
            "limits": {"cpus": "2", "memory": "2G", "pids": 100},
            "reservations": {"memory": "1G"},
        }
        assert host_config(compose_stack, "backend") == {
            "NanoCpus": 2 * 10**9, "Memory": 2 * GIB, "MemoryReservation": GIB, "PidsLimit": 100,
        }  # fmt: skip
        again = run_compose("--check=COMPOSE-008", "--remediate=apply", "--allow=recreate")
        passed(again, "COMPOSE-008", "backend")
    finally:
        override.unlink(missing_ok=True)
        _compose(compose_stack, runtime, "up", "-d", "--force-recreate", "--no-deps", "backend")


def test_not_applicable_on_the_native_sandbox(tmp_path: Path) -> None:
    """The native sandbox's inventory (a sandbox: section, no compose:) makes COMPOSE-008 not
    applicable, with the reason, however the inventory expects limits; nothing is started."""
    compose = yamltext.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert compose["services"]["backend"]["deploy"]["resources"]["limits"]["memory"] == "2G"
    inventory = tmp_path / "inventory.yaml"
    services = {s: {"limits": limits} for s, limits in RUNBOOK_LIMITS.items()}
    inventory.write_text(
        yaml.safe_dump({"name": "native", "sandbox": {"dir": str(tmp_path)}, "services": services})
    )
    reports = tmp_path / "reports"
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OPSBOOK_", "PYTEST_"))}
    done = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", f"--inventory={inventory}",
            f"--reports-dir={reports}", "-m", "daily", "--check=COMPOSE-008,COMPOSE-005",
        ],
        cwd=REPO, env=environment, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    run = CheckRun(done, reports)
    assert done.returncode == 0, run.output
    for check_id in ("COMPOSE-008", "COMPOSE-005"):
        row = run.row(check_id, "none")
        assert row["outcome"] == "skipped", run.output
        assert "the native sandbox enforces no CPU or memory limits" in row["message"], row


def test_alert_limits_read_the_stack_override(tmp_path: Path) -> None:
    """The stack's memory-limits rules take the override file's limits over compose.yaml's (the
    limits the engine enforces after the fix); no engine needed."""
    stack = ComposeStack(tmp_path / "stack")
    stack._prepare_dir()
    rules = stack.dir / "prometheus" / "rules" / "memory-limits.rules.yml"
    assert recorded_limits(rules) == {"backend": 2 * GIB, "prometheus": 512 * MIB}
    assert stack.override_file == stack.dir / "compose.override.yaml"
    stack.override_file.write_text(SHRUNK)
    stack._prepare_dir()
    assert recorded_limits(rules) == {"backend": 256 * MIB, "prometheus": 512 * MIB}
    assert f"and {stack.override_file}" in rules.read_text().splitlines()[0]


def recorded_limits(rules: Path) -> dict[str, int]:
    document = yamltext.safe_load(rules.read_text())
    return {
        rule["labels"]["job"]: int(rule["expr"].removeprefix("vector(").removesuffix(")"))
        for rule in document["groups"][0]["rules"]
    }
