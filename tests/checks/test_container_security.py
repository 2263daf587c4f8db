"""checks/test_containers_security.py on a real compose stack: the default stack passes the
container audit; each check fails, with a message naming the container and the inspect field,
when one service is recreated from an override that breaks it for real; recreated from
compose.yaml, it passes again.

The worker is the service broken (no published port, nothing waits on it), the backend for
NODE_OPTIONS. Not broken here, and why: `network_mode: host` (the worker would share the host's
network and loopback; `pid: host` proves the same check), `ipc: host` (Podman 4.3's API reports
it as `shareable`: invisible to the check). The 0.0.0.0 port is published by the recreated
worker, in which nothing listens on it. The docker.sock is a dummy file, never the engine's.

Needs a Docker API and `docker compose`; skipped, with the reason, when either is missing.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path

import pytest
from support import CheckRun
from test_compose_checks import (  # one stack per module, built the same way
    RunCompose,
    compose_stack,
    container,
    failed,
    passed,
    run_compose,
    runtime,
)

from opsbook.inventory import load_inventory
from opsbook.remediate.runtime import ComposeRuntime
from opsbook.sandbox.compose import ComposeStack

pytestmark = pytest.mark.containers

__all__ = ["compose_stack", "run_compose", "runtime"]  # fixtures, used by name

# SEC-080 aside: no service of the stack runs Node.js, it is not applicable to any of them.
PER_SERVICE = [f"SEC-0{n}" for n in range(70, 79)]
CHECKS = f"--check={','.join([*PER_SERVICE, 'SEC-079', 'SEC-080'])}"
SERVICES = ("postgres", "redis", "backend", "worker", "frontend", "prometheus")


def audit(run_compose, *args: str) -> CheckRun:
    return run_compose("-m", "audit", CHECKS, *args)


def recreate_with(
    stack: ComposeStack, runtime: ComposeRuntime, tmp_path: Path, service: str, override: str
) -> None:
    """Recreate one service from compose.yaml plus an override (its published port kept)."""
    path = tmp_path / f"{service}-override-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(override)
    port = runtime.ports.get(service)
    env = {**stack._env(), **({f"OPSBOOK_PORT_{service.upper()}": str(port)} if port else {})}
    done = subprocess.run(
        [
            "docker", "compose", "-p", stack.project, "-f", str(stack.compose_file),
            "-f", str(path), "up", "-d", "--force-recreate", "--no-deps", service,
        ],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"recreate {service} with {override!r}: {done.stderr}"


def test_default_stack_passes_the_container_audit(
    compose_stack: ComposeStack, run_compose: RunCompose
) -> None:
    run = audit(run_compose)
    assert run.exit_code == 0, run.output
    for service in SERVICES:
        for check_id in PER_SERVICE:
            passed(run, check_id, service)
    passed(run, "SEC-079", None)
    for service in SERVICES:
        assert run.outcome("SEC-080", service) == "skipped", run.output
        assert f"{service} is not a Node service" in run.row("SEC-080", service)["message"]
    worker = container(compose_stack, "worker")
    assert run.row("SEC-074", "worker")["observed"][worker]["user"] == "app"


# (id, override of the worker, the checks that must fail, what their messages say)
BREAKAGES = [
    pytest.param(
        "privileged: true",
        # Privileged holds every capability: SEC-073 says so too.
        {
            "SEC-070": "runs privileged (HostConfig.Privileged=true) (expected "
            "HostConfig.Privileged=false)",
            "SEC-073": "holds ALL capabilities",
            "SEC-078": "privileged: declared false, running true",
        },
        marks=pytest.mark.breaks("SEC-070", "SEC-073", "SEC-078"),
        id="privileged",
    ),
    pytest.param(
        "volumes: ['{dummy}:/var/run/docker.sock:ro']",
        {"SEC-071": ":/var/run/docker.sock:ro (Mounts: the engine's API) (expected no engine"},
        marks=pytest.mark.breaks("SEC-071"),
        id="docker-sock",
    ),
    pytest.param(
        "pid: host",
        {
            "SEC-072": "shares the host's PID (PidMode=host) (expected its own network, PID",
            "SEC-078": "host namespaces: declared none, running PID (PidMode=host)",
        },
        marks=pytest.mark.breaks("SEC-072", "SEC-078"),
        id="pid-host",
    ),
    pytest.param(
        "cap_add: [SYS_ADMIN]",
        {
            "SEC-073": "holds dangerous SYS_ADMIN (HostConfig.CapAdd/CapDrop",
            "SEC-078": "capabilities held: declared none, running SYS_ADMIN",
        },
        marks=pytest.mark.breaks("SEC-073", "SEC-078"),
        id="cap-sys-admin",
    ),
    pytest.param(
        "security_opt: !reset []",
        {
            "SEC-073": "lacks no-new-privileges (HostConfig.SecurityOpt: none",
            "SEC-078": "security_opt: declared no-new-privileges, running none",
        },
        marks=pytest.mark.breaks("SEC-073", "SEC-078"),
        id="no-new-privileges-off",
    ),
    pytest.param(
        "user: root",
        {
            "SEC-074": "runs as root (Config.User) (expected a non-root user)",
            "SEC-078": "user: declared app (the image's USER), running root",
        },
        marks=pytest.mark.breaks("SEC-074", "SEC-078"),
        id="user-root",
    ),
    pytest.param(
        "deploy: !reset {{}}",
        {
            "SEC-075": "has no memory limit (HostConfig.Memory=0",
            "SEC-078": "memory limit: declared 256 MiB, running none",
        },
        marks=pytest.mark.breaks("SEC-075", "SEC-078"),
        id="no-memory-limit",
    ),
    pytest.param(
        "ports: ['0.0.0.0::9999']",
        {
            "SEC-076": "->9999/tcp on all interfaces (HostConfig.PortBindings) (expected a "
            "specific address on loopback",
            "SEC-078": "port: declared nothing, running 0.0.0.0:",
        },
        marks=pytest.mark.breaks("SEC-076", "SEC-078"),
        id="port-all-interfaces",
    ),
    pytest.param(
        "environment: {{SECRET_TOKEN: '{canary}'}}",
        {
            "SEC-077": "has SECRET_TOKEN in clear in its container's ENV (Config.Env, value "
            "redacted",
            "SEC-078": "environment: SECRET_TOKEN declared not set, running set (value not shown)",
        },
        marks=pytest.mark.breaks("SEC-077", "SEC-078"),
        id="secret-env",
    ),
]


@pytest.mark.parametrize(("override", "expected"), BREAKAGES)
def test_broken_worker_fails_the_matching_check(
    compose_stack: ComposeStack,
    runtime: ComposeRuntime,
    run_compose,
    tmp_path: Path,
    override: str,
    expected: dict[str, str],
) -> None:
    canary = f"opsbook-canary-{uuid.uuid4().hex}"
    dummy = tmp_path / "docker.sock"  # a plain file: never the engine's socket
    dummy.write_text("")
    text = override.format(dummy=dummy, canary=canary)
    recreate_with(compose_stack, runtime, tmp_path, "worker", f"services:\n  worker:\n    {text}\n")
    name = container(compose_stack, "worker")
    try:
        # --showlocals: a failing check's locals are printed; the secret must not be among them.
        run = audit(run_compose, "--showlocals")
        assert run.exit_code == 1, run.output
        for check_id, words in expected.items():
            message = failed(run, check_id, "worker")
            assert message.startswith(f"worker: {name} "), message
            assert words in message, f"{check_id}: {words!r} not in {message!r}"
        for check_id in PER_SERVICE:
            if check_id not in expected:
                passed(run, check_id, "worker")
        for service in SERVICES:  # only the broken service fails
            if service != "worker":
                for check_id in PER_SERVICE:
                    passed(run, check_id, service)
        if "{canary}" in override:
            files = run_files(run)
            assert {"report.html", "junit.xml", "findings.json"} <= {f.name for f in files}
            leaks = [str(f) for f in files if canary in f.read_text(errors="replace")]
            assert canary not in run.output, "the secret value reached the terminal"
            assert not leaks, f"the secret value is in {leaks}"
            evidence = json.dumps(run.row("SEC-077", "worker"))
            assert f"container ENV SECRET_TOKEN (value redacted, {len(canary)} chars)" in evidence
    finally:
        runtime.recreate("worker")
    again = audit(run_compose)
    assert again.exit_code == 0, again.output
    for check_id in expected:
        passed(again, check_id, "worker")


def deployment(stack: ComposeStack) -> str:
    """How a check of the whole deployment names it in its messages: the inventory's name."""
    return load_inventory(stack.inventory_path, environ={}).name


def run_files(run: CheckRun) -> list[Path]:
    """Every file the run wrote into its report folder (report.html, junit.xml, findings.json)."""
    printed = re.search(r"opsbook report: (\S+)/report\.html", run.output)
    assert printed, run.output
    return [p for p in Path(printed[1]).rglob("*") if p.is_file()]


@pytest.mark.breaks("SEC-080")
def test_node_heap_against_the_backend_memory_limit(
    compose_stack: ComposeStack, runtime: ComposeRuntime, run_compose, tmp_path: Path
) -> None:
    name = container(compose_stack, "backend")
    try:
        # 1536 MiB (the runbook's NODE_OPTIONS) is 75% of the backend's 2 GiB limit: the largest
        # heap that fits. NODE_OPTIONS set makes the Python backend stand for a Node service.
        recreate_with(
            compose_stack, runtime, tmp_path, "backend",
            "services:\n  backend:\n    environment: {NODE_OPTIONS: '--max-old-space-size=1536'}\n",
        )  # fmt: skip
        run = run_compose("-m", "audit", "--check=SEC-080")
        passed(run, "SEC-080", "backend")
        assert run.row("SEC-080", "backend")["observed"] == {
            name: {"heap_mib": 1536, "max_heap_mib": 1536}
        }
        recreate_with(
            compose_stack, runtime, tmp_path, "backend",
            "services:\n  backend:\n    environment:\n"
            "      NODE_OPTIONS: '--enable-source-maps --max-old-space-size=2048'\n",
        )  # fmt: skip
        run = run_compose("-m", "audit", "--check=SEC-080,HEALTH-001")
        assert failed(run, "SEC-080", "backend") == (
            f"backend: {name} sets --max-old-space-size=2048 (Config.Env NODE_OPTIONS): 2048 MiB "
            "is more than 75% of its 2048 MiB memory limit (at most 1536 MiB) (expected "
            "--max-old-space-size <= 75% of the memory limit, or not set)"
        )
        assert run.outcome("SEC-080", "frontend") == "skipped", run.output  # nginx
    finally:
        runtime.recreate("backend")
    again = run_compose("-m", "audit", "--check=SEC-080,SEC-078")
    assert again.exit_code == 0, again.output
    assert again.outcome("SEC-080", "backend") == "skipped", again.output  # Python again


@pytest.mark.breaks("SEC-079")
def test_undeclared_container_in_the_project_fails(
    compose_stack: ComposeStack, runtime: ComposeRuntime, run_compose, tmp_path: Path
) -> None:
    # A service only an override declares: started into the project, unknown to compose.yaml.
    override = tmp_path / "stray.yaml"
    override.write_text(
        "services:\n  stray:\n    image: localhost/opsbook-app:dev\n"
        "    command: ['sleep', '300']\n    cap_drop: [ALL]\n"
    )
    base = [
        "docker", "compose", "-p", compose_stack.project, "-f", str(compose_stack.compose_file),
        "-f", str(override),
    ]  # fmt: skip
    subprocess.run(
        [*base, "up", "-d", "--no-deps", "stray"],
        env=compose_stack._env(), capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    stray = container(compose_stack, "stray")
    try:
        run = audit(run_compose)
        message = failed(run, "SEC-079", None)
        assert message == (
            f"{deployment(compose_stack)}: {stray} belongs to service stray, which the compose "
            "file does not declare (running) (expected only declared services "
            "(`docker compose up --remove-orphans`))"
        ), message
        passed(run, "SEC-078", "worker")
    finally:
        subprocess.run(
            [*base, "rm", "--stop", "--force", "stray"],
            env=compose_stack._env(), capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
    again = audit(run_compose)
    passed(again, "SEC-079", None)
