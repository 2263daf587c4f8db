"""opsbook/probes/containers.py and the observing half of opsbook/probes/container_security.py.

The pure readers on recorded shapes of the engine's answers (no engine); then both probes on one
real container, started with testcontainers from the local base image and labelled as a compose
service, so that what they read through the docker SDK is what `docker inspect` says.
"""

from __future__ import annotations

import gc
import os
import shlex
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from testcontainers.core.container import DockerContainer

from opsbook.errors import NotEvaluated
from opsbook.inventory import load_inventory
from opsbook.probes.container_security import audit_facts
from opsbook.probes.containers import (
    NUMBER_LABEL,
    PROJECT_LABEL,
    SERVICE_LABEL,
    ComposeProject,
    connect,
    container_state,
    exec_kind,
    log_errors,
    unpublished_services,
    usage,
    usage_between,
)

# Built on the machine by scripts/setup-container-engine (mmdebstrap), never pulled.
BASE_IMAGE = "debian:bookworm-slim"
ERROR_LINE = "2026-01-01 00:00:00,000 ERROR probe test: lost the database connection"


def test_container_state_reads_a_kill_from_the_exit_code() -> None:
    state = container_state(
        {
            "Name": "/p-worker-1",
            "RestartCount": 2,
            "State": {"Status": "exited", "ExitCode": 137, "OOMKilled": False},
            "Config": {"Labels": {SERVICE_LABEL: "worker"}},
            "HostConfig": {"Memory": 268435456, "NanoCpus": 500000000},
        }
    )
    assert (state.name, state.service, state.describe()) == ("p-worker-1", "worker", "exited (137)")
    assert state.killed
    assert not state.running
    assert (state.memory_limit_bytes, state.cpus_limit, state.health) == (268435456, 0.5, None)


def test_a_database_service_named_otherwise_is_probed_by_its_role(tmp_path: Path) -> None:
    """The runbook's compose file may call PostgreSQL `database`: its role in the inventory
    says which exec probe it answers (pg_isready), and a published one needs none."""
    path = tmp_path / "inventory.yaml"
    path.write_text(
        "name: renamed\n"
        "redis: {queue: {url: 'redis://127.0.0.1:6379/0', service: cache}}\n"
        "services:\n"
        "  database: {role: database}\n"
        "  cache: {role: queue, targets: [queue]}\n"
        "  backend: {role: api, depends_on: [database, cache]}\n"
    )
    inventory = load_inventory(path, environ={})
    assert exec_kind(inventory, "database") == "postgres"
    assert exec_kind(inventory, "cache") == "redis"
    assert exec_kind(inventory, "backend") is None
    assert exec_kind(inventory, "postgres") == "postgres"  # the reference stack's own name
    declared = ["backend", "cache", "database"]
    assert unpublished_services(inventory, declared) == ["database"]


def test_usage_between_two_samples() -> None:
    first = {"cpu_stats": {"cpu_usage": {"total_usage": 1_000_000_000}}}
    second = {
        "cpu_stats": {"cpu_usage": {"total_usage": 1_500_000_000}},
        "memory_stats": {"usage": 50 * 2**20, "stats": {"inactive_file": 10 * 2**20}},
    }
    used = usage_between(first, second, elapsed_s=1.0)
    assert (used.memory_bytes, used.cpus_used) == (40 * 2**20, 0.5)
    # Podman on hybrid cgroups: empty fields are unknown, never zero.
    assert usage_between({}, {}, 1.0).memory_bytes is None


# The docker SDK leaves the socket of a failed connection to the garbage collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_engine_lost_mid_run_is_not_evaluated(tmp_path: Path) -> None:
    # A pinned API version: the client does not ask the engine for one when it is made.
    client = docker.DockerClient(f"unix://{tmp_path}/gone.sock", version="1.41", timeout=1)
    try:
        with pytest.raises(NotEvaluated, match=r"^worker: docker ps: .*No such file"):
            ComposeProject(client, "p").states("worker")
    finally:
        client.close()
        gc.collect()  # here, not in a later test


@pytest.fixture(scope="module")
def service_container() -> Iterator[tuple[ComposeProject, str]]:
    """One container of service `worker` of a compose project of its own, hardened but with a
    secret in its ENV; (the project, the container's name)."""
    docker_host = os.environ.get("DOCKER_HOST")
    client = connect(docker_host)
    try:
        client.images.get(BASE_IMAGE)
    except Exception as exc:  # the engine is missing, or the base image was never built
        pytest.skip(f"no {BASE_IMAGE} on the engine ({exc}): run scripts/setup-container-engine")
    project = f"opsbook-probe-{uuid.uuid4().hex[:8]}"
    name = f"{project}-worker-1"
    container = DockerContainer(
        BASE_IMAGE,
        command=shlex.join(["sh", "-c", f"echo '{ERROR_LINE}'; exec sleep 300"]),
        name=name,
        env={"SECRET_TOKEN": "probe-canary-value", "DB_PASSWORD_FILE": "/run/secrets/db"},
        user="65534",
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        mem_limit="64m",
        pids_limit=32,
        labels={PROJECT_LABEL: project, SERVICE_LABEL: "worker", NUMBER_LABEL: "1"},
    )
    with container:
        yield ComposeProject(client, project), name
    client.close()


@pytest.mark.containers
def test_state_and_logs_of_a_real_container(service_container: tuple[ComposeProject, str]) -> None:
    project, name = service_container
    (state,) = project.states("worker")
    assert (state.name, state.service, state.status) == (name, "worker", "running")
    assert state.memory_limit_bytes == 64 * 2**20
    (logged,) = log_errors(project, "worker", window_s=300, tail_lines=100)
    assert (logged.container, logged.lines) == (name, (ERROR_LINE,))
    assert project.states("frontend") == []


@pytest.mark.containers
def test_usage_of_a_real_container(service_container: tuple[ComposeProject, str]) -> None:
    project, name = service_container
    used = usage(project, window_s=0.2)
    assert set(used) == {name}
    # The engine may leave a field empty (hybrid cgroups); what it reports is plausible.
    memory = used[name].memory_bytes
    if memory is not None:
        assert 0 < memory < 64 * 2**20


@pytest.mark.containers
def test_audit_facts_of_a_real_container(service_container: tuple[ComposeProject, str]) -> None:
    project, name = service_container
    (facts,) = audit_facts(project)["worker"]
    assert facts.name == name
    assert (facts.user, facts.user_from) == ("65534", "container")
    assert facts.held_caps == frozenset()  # whichever way the engine spells cap_drop: [ALL]
    assert facts.no_new_privileges
    assert not facts.privileged
    assert (facts.memory_limit_bytes, facts.pids_limit) == (64 * 2**20, 32)
    assert [(s.name, s.source) for s in facts.secrets] == [("SECRET_TOKEN", "container")]
    assert "probe-canary-value" not in repr(facts)
    assert facts.host_namespaces == ()
    assert facts.bindings == ()
