"""Security audit of the compose project's containers: what runs, as `docker inspect` shows it.

Every container of each compose service (stopped ones too: they run again on the next start) is
judged from its HostConfig and Config, and its image's Config where the container leaves a field
to the image (USER, ENV). The compose file is compared with what runs through
`docker compose config --format json`, so that an override, a hand-made `docker run` or a
forgotten recreate shows up as drift. Skipped, saying so, when the inventory has no `compose`
section. What each engine reports differently is read in opsbook/probes/container_security.py;
one thing cannot be read at all: Podman 4.3 reports a host IPC namespace as `shareable`.

Evidence names the container and the inspect field; secret values found in ENV are never shown:
each is masked in every report (the run's redactor learns it) and only its name and length appear.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest

from opsbook import Severity, check
from opsbook.plugin.keys import REDACTOR
from opsbook.probes.container_security import (
    NEEDED_CAPS,
    NODE_HEAP_SHARE,
    ContainerFacts,
    binding_problem,
    capability_problems,
    container_facts,
    declared,
    drift,
    engine_socket_mounts,
    heap_budget_mib,
    max_old_space_mib,
    runs_as_root,
)
from opsbook.probes.containers import SERVICE_LABEL, ComposeProject, declared_services, mib

pytestmark = [pytest.mark.audit, pytest.mark.security, pytest.mark.compose]

COMPOSE_CONFIG_TIMEOUT_S = 30
# Who is the public entry point when the inventory names no frontend endpoint.
DEFAULT_PUBLIC = ("frontend",)


@pytest.fixture(scope="session")
def project_containers(
    compose_project: ComposeProject, docker_engine: Any, pytestconfig: pytest.Config
) -> dict[str, list[ContainerFacts]]:
    """The facts of every container of the project, by compose service, read once per run."""
    images: dict[str, dict[str, Any] | None] = {}
    redactor = pytestconfig.stash[REDACTOR]
    result: dict[str, list[ContainerFacts]] = {}
    for container in compose_project.containers():
        attrs = container.attrs
        image_id = str(attrs.get("Image") or "")
        if image_id not in images:
            try:
                images[image_id] = docker_engine.images.get(image_id).attrs.get("Config") or {}
            except Exception:  # the SDK's ImageNotFound/APIError: the container's fields only
                images[image_id] = None
        facts = container_facts(attrs, images[image_id])
        for secret in facts.secrets:
            redactor.add(secret.value)  # masked wherever the run writes, whatever the path
        result.setdefault(facts.service, []).append(facts)
    return result


@pytest.fixture
def service_containers(
    project_containers: dict[str, list[ContainerFacts]], compose_service: str
) -> list[ContainerFacts]:
    """The containers of the service under check; skipped (saying so) when there is none."""
    found = project_containers.get(compose_service, [])
    if not found:
        pytest.skip(
            f"{compose_service}: no container to inspect (COMPOSE-001 and SEC-078 report it)"
        )
    return found


def _report(service: str, problems: list[str]) -> str:
    return f"{service}: " + "; ".join(problems)


@check("SEC-070", Severity.CRITICAL)
def test_containers_are_not_privileged(
    compose_service: str, service_containers: list[ContainerFacts], finding
) -> None:
    """The service's containers are not privileged.

    Risk: a privileged container holds every capability and every host device; root in it is
    root on the host (mount the host's disk, load a kernel module).
    """
    finding.observe(
        "; ".join(f"{c.name} Privileged={str(c.privileged).lower()}" for c in service_containers),
        expected="HostConfig.Privileged=false",
    )
    problems = [
        f"{c.name} runs privileged (HostConfig.Privileged=true; expected false)"
        for c in service_containers
        if c.privileged
    ]
    assert not problems, _report(compose_service, problems)


@check("SEC-071", Severity.CRITICAL)
def test_no_engine_socket_is_mounted(
    compose_service: str, service_containers: list[ContainerFacts], finding
) -> None:
    """No container of the service has the engine's socket (docker.sock, podman.sock) mounted.

    Risk: whoever reaches the engine's API starts a privileged container with the host's disk
    mounted: a compromised service becomes root on the host. Read-only does not help.
    """
    found = [(c, m) for c in service_containers for m in engine_socket_mounts(c.mounts)]
    finding.observe(len(found), expected=0)
    finding.attach(
        "Mounts (source:destination)",
        "\n".join(f"{c.name}: {m.line()}" for c in service_containers for m in c.mounts)
        or "(none)",
    )
    problems = [
        f"{c.name} mounts {m.line()} (Mounts: the engine's API; expected no engine socket)"
        for c, m in found
    ]
    assert not problems, _report(compose_service, problems)


@check("SEC-072", Severity.HIGH)
def test_no_host_namespaces(
    compose_service: str, service_containers: list[ContainerFacts], finding
) -> None:
    """The service's containers share no namespace with the host (network, PID, IPC).

    Risk: host networking reaches every port bound to the host's loopback and bypasses the
    published-port rules; the host's PID namespace shows (and, with a capability, signals or
    traces) every process; the host's IPC namespace reads other processes' shared memory.
    """
    finding.observe(
        "; ".join(f"{c.name}: {', '.join(c.host_namespaces) or 'own'}" for c in service_containers),
        expected="own network, PID and IPC namespaces",
    )
    problems = [
        f"{c.name} shares the host's {', '.join(c.host_namespaces)} (expected its own)"
        for c in service_containers
        if c.host_namespaces
    ]
    assert not problems, _report(compose_service, problems)


@check("SEC-073", Severity.HIGH)
def test_capabilities_dropped_and_no_new_privileges(
    compose_service: str, service_containers: list[ContainerFacts], finding
) -> None:
    """The service's containers dropped their capabilities and set no-new-privileges.

    Risk: capabilities are root's powers in pieces: SYS_ADMIN, NET_ADMIN or SYS_PTRACE turn a
    compromised service into an escape; without no-new-privileges a setuid binary in the image
    gives a process back what was dropped.
    """
    finding.observe(
        "; ".join(
            f"{c.name} caps={','.join(sorted(c.held_caps)) or 'none'} "
            f"no-new-privileges={str(c.no_new_privileges).lower()}"
            for c in service_containers
        ),
        expected=(
            f"cap_drop: [ALL] (cap_add only of {', '.join(sorted(NEEDED_CAPS))}), no-new-privileges"
        ),
    )
    problems = []
    for container in service_containers:
        problems += [
            f"{container.name} {problem} (HostConfig.CapAdd/CapDrop; expected cap_drop: [ALL] "
            "and cap_add only of what the service needs)"
            for problem in capability_problems(set(container.held_caps))
        ]
        if not container.no_new_privileges:
            shown = ", ".join(sorted(container.security_opt)) or "none"
            problems.append(
                f"{container.name} lacks no-new-privileges (HostConfig.SecurityOpt: {shown}; "
                "expected security_opt: [no-new-privileges:true])"
            )
    assert not problems, _report(compose_service, problems)


@check("SEC-074", Severity.HIGH)
def test_containers_run_as_non_root(
    compose_service: str, service_containers: list[ContainerFacts], finding
) -> None:
    """The service's containers run as a non-root user (their own user, else their image's).

    Risk: root in a container is root on the host's kernel; one escape bug, one writable host
    mount or one capability left away from owning the host.
    """
    finding.observe(
        "; ".join(f"{c.name} user={c.user} (from {c.user_from})" for c in service_containers),
        expected="a non-root user",
    )
    field = {"container": "Config.User", "image": "the image's USER", "default": "no user set"}
    problems = [
        f"{c.name} runs as {c.user} ({field[c.user_from]}; expected a non-root user)"
        for c in service_containers
        if runs_as_root(c.user)
    ]
    assert not problems, _report(compose_service, problems)


@check("SEC-075", Severity.MEDIUM)
def test_memory_and_pid_limits_set(
    compose_service: str, service_containers: list[ContainerFacts], finding
) -> None:
    """The service's containers have a memory limit and a process-count (PID) limit.

    Risk: without them, one leaking or fork-bombed container takes the host's memory or its
    process table, and the kernel kills or starves whatever it picks, PostgreSQL included.
    """
    finding.observe(
        "; ".join(
            f"{c.name} memory={mib(c.memory_limit) if c.memory_limit else 'none'} "
            f"pids={c.pids_limit or 'none'}"
            for c in service_containers
        ),
        expected="a memory limit and a PID limit",
    )
    problems = []
    for container in service_containers:
        if not container.memory_limit:
            problems.append(
                f"{container.name} has no memory limit (HostConfig.Memory=0; expected "
                "deploy.resources.limits.memory)"
            )
        if not container.pids_limit:
            problems.append(
                f"{container.name} has no PID limit (HostConfig.PidsLimit unset; expected "
                "deploy.resources.limits.pids)"
            )
    assert not problems, _report(compose_service, problems)


def _public_services(inventory: Any) -> set[str]:
    named = {e.service for e in inventory.http.values() if e.kind == "frontend" and e.service}
    return named or set(DEFAULT_PUBLIC)


@check("SEC-076", Severity.HIGH)
def test_ports_published_on_specific_interfaces(
    compose_service: str, service_containers: list[ContainerFacts], inventory, finding
) -> None:
    """The service publishes its ports on a specific address, never all interfaces; only the
    public entry point (the frontend) beyond loopback.

    Risk: a port published on 0.0.0.0 is open to every network the host is on, past the host's
    firewall (the engine writes its own rules); PostgreSQL, Redis and Prometheus would face the
    internet with nothing but their passwords, and Prometheus has none.
    """
    public = compose_service in _public_services(inventory)
    finding.observe(
        "; ".join(
            f"{c.name}: {', '.join(b.line() for b in c.bindings) or 'nothing published'}"
            for c in service_containers
        ),
        expected="a specific address" + ("" if public else " on loopback (127.0.0.1)"),
    )
    problems = [
        f"{c.name} {problem} (HostConfig.PortBindings)"
        for c in service_containers
        for b in c.bindings
        if (problem := binding_problem(b, public))
    ]
    assert not problems, _report(compose_service, problems)


@check("SEC-077", Severity.HIGH)
def test_no_secrets_in_environment(
    compose_service: str, service_containers: list[ContainerFacts], finding
) -> None:
    """No password, secret, token or key in clear in the image's or the container's ENV.

    Risk: ENV is readable by anyone who may `docker inspect` or pull the image, is copied into
    every child process and crash report, and lands in logs; a file (a compose secret) is not.
    """
    found = [(c, s) for c in service_containers for s in c.secrets]
    finding.observe(len(found), expected=0)
    if found:
        shown = "\n".join(f"{c.name}: {s.line()}" for c, s in found)
        finding.attach("variables (values redacted)", shown)
    problems = [
        f"{c.name} has {s.name} in clear in its {s.source}'s ENV "
        f"({'the image Config.Env' if s.source == 'image' else 'Config.Env'}, value redacted; "
        "expected a file under /run/secrets, its path in the ENV)"
        for c, s in found
    ]
    assert not problems, _report(compose_service, problems)


# --- the compose file against what runs -------------------------------------------------------


@pytest.fixture(scope="session")
def compose_config(inventory: Any) -> dict[str, Any]:
    """`docker compose config --format json` of the inventory's compose file and project."""
    compose = inventory.compose
    assert compose is not None, "parametrization skips checks without compose"
    if compose.file is None:
        pytest.skip(f"{compose.project}: no compose file in the inventory to compare with")
    env = dict(os.environ)
    if compose.docker_host:
        env["DOCKER_HOST"] = compose.docker_host
    if compose.dir:
        env["OPSBOOK_COMPOSE_DIR"] = str(compose.dir)
    command = ["docker", "compose", "-p", compose.project, "-f", str(compose.file)]
    try:
        done = subprocess.run(
            [*command, "config", "--format", "json"], env=env, capture_output=True, text=True,
            timeout=COMPOSE_CONFIG_TIMEOUT_S, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        pytest.fail(f"could not evaluate: `docker compose config`: {reason}", pytrace=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.fail(
            f"could not evaluate: `docker compose config` exited {done.returncode}: {last}",
            pytrace=False,
        )
    document: dict[str, Any] = json.loads(done.stdout)
    return document


@check("SEC-078", Severity.MEDIUM)
def test_service_runs_as_the_compose_file_declares(
    compose_service: str, compose_config, project_containers, finding
) -> None:
    """The service's containers run as the compose file declares them (image, user, ports,
    limits, capabilities, security options, privileged, namespaces).

    Risk: what was reviewed is the compose file; a container recreated by hand, from an
    override or from an old file runs with settings nobody reviewed, and the next `up` silently
    changes them again.
    """
    services = compose_config.get("services") or {}
    if compose_service not in services:
        pytest.skip(f"{compose_service}: not in `docker compose config` (behind a profile?)")
    want = declared(services[compose_service])
    running = [c for c in project_containers.get(compose_service, []) if c.status == "running"]
    drifted = {c.name: drift(want, c) for c in running}
    finding.observe(
        sum(len(found) for found in drifted.values()) if running else "no container running",
        expected="no drift",
    )
    if any(drifted.values()):
        finding.attach(
            "drift (field: declared, running)",
            "\n".join(f"{name}: {line}" for name, found in drifted.items() for line in found),
        )
    assert running, (
        f"{compose_service}: declared in the compose file, but no container of it runs "
        "(expected at least one running)"
    )
    problems = [f"{name} differs: {'; '.join(found)}" for name, found in drifted.items() if found]
    assert not problems, _report(compose_service, problems) + " (expected as declared)"


@check("SEC-079", Severity.MEDIUM)
def test_no_undeclared_service_runs(inventory, request: pytest.FixtureRequest, finding) -> None:
    """Every container of the compose project belongs to a service the compose file declares.

    Risk: a container left from an old version of the file, or started by hand into the
    project, runs unreviewed and unpatched, on the project's network next to the database.
    """
    compose = inventory.compose
    if compose is None:
        pytest.skip(
            "the inventory has no compose section (the stack does not run as a compose project)"
        )
    if compose.file is None:
        pytest.skip(f"{compose.project}: no compose file in the inventory to compare with")
    compose_project: ComposeProject = request.getfixturevalue("compose_project")
    wanted = set(declared_services(compose.file))
    orphans = [
        (c.name, c.labels.get(SERVICE_LABEL, ""), c.status)
        for c in compose_project.containers()
        if c.labels.get(SERVICE_LABEL, "") not in wanted
    ]
    finding.observe(
        ", ".join(f"{name} (service {svc or '?'}, {status})" for name, svc, status in orphans)
        or "none",
        expected="only declared services",
    )
    assert not orphans, f"project {compose.project}: " + "; ".join(
        f"{name} belongs to service {service or '(no label)'}, which {compose.file.name} does "
        f"not declare ({status}; expected none: `docker compose up --remove-orphans`)"
        for name, service, status in orphans
    )


# --- issue 8: the heap of a Node service against its memory limit -----------------------------


@pytest.mark.resources
@check("SEC-080", Severity.MEDIUM)
def test_node_heap_fits_memory_limit(
    compose_service: str, service_containers: list[ContainerFacts], finding
) -> None:
    """NODE_OPTIONS' --max-old-space-size fits the container's memory limit (at most 75%).

    Risk: a V8 heap allowed to grow past the container's limit never collects in time: the
    kernel kills the process with SIGKILL at the limit, mid-request, with no "heap out of memory"
    error to tell why.
    """
    share = f"{NODE_HEAP_SHARE:.0%}"
    seen, problems = [], []
    for container in service_containers:
        options = container.node_options
        if not options:
            seen.append(f"{container.name}: NODE_OPTIONS not set")
            continue
        try:
            heap = max_old_space_mib(options)
        except ValueError as exc:
            seen.append(f"{container.name}: NODE_OPTIONS={options}")
            problems.append(f"{container.name}: NODE_OPTIONS {exc} (Config.Env)")
            continue
        if heap is None:
            seen.append(f"{container.name}: NODE_OPTIONS without --max-old-space-size")
            continue
        if not container.memory_limit:
            seen.append(f"{container.name}: heap {heap} MiB, no memory limit")
            problems.append(
                f"{container.name} sets --max-old-space-size={heap} but has no memory limit "
                "to fit it in (HostConfig.Memory=0; expected deploy.resources.limits.memory)"
            )
            continue
        budget = heap_budget_mib(container.memory_limit)
        seen.append(
            f"{container.name}: heap {heap} MiB of {mib(container.memory_limit)} (max {budget} MiB)"
        )
        if heap > budget:
            problems.append(
                f"{container.name} sets --max-old-space-size={heap} (Config.Env NODE_OPTIONS): "
                f"{heap} MiB is more than {share} of its {mib(container.memory_limit)} memory "
                f"limit (expected <= {budget} MiB)"
            )
    finding.observe("; ".join(seen), expected=f"heap <= {share} of the memory limit, or not set")
    assert not problems, _report(compose_service, problems)
