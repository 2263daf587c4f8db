"""Security audit of the compose project's containers: what runs, as `docker inspect` shows it.

Every container of each compose service (stopped ones too: they run again on the next start) is
judged from its HostConfig and Config, and its image's Config where the container leaves a field
to the image (USER, ENV). The compose file is compared with what runs through
`docker compose config --format json`, so that an override, a hand-made `docker run` or a
forgotten recreate shows up as drift. Skipped, saying so, when the inventory has no `compose`
section. The facts are read once per run by opsbook/probes/container_security.py (fixtures in
fixtures/containers.py), which also says what each engine reports differently; one thing cannot
be read at all: Podman 4.3 reports a host IPC namespace as `shareable`.

Evidence names the container and the inspect field; secret values found in ENV are never shown:
each is masked in every report (the run's redactor learns it) and only its name and length appear.
"""

from __future__ import annotations

import pytest

from opsbook import Finding, Inventory, Severity, Unit, check
from opsbook.probes.container_security import (
    NEEDED_CAPS,
    NODE_HEAP_SHARE,
    ContainerFacts,
    Declared,
    binding_problem,
    capability_problems,
    drift,
    engine_socket_mounts,
    heap_budget_mib,
    max_old_space_mib,
    runs_as_root,
)
from opsbook.probes.containers import ComposeProject, mib

pytestmark = [pytest.mark.audit, pytest.mark.security, pytest.mark.compose]

# Who is the public entry point when the inventory names no frontend endpoint.
DEFAULT_PUBLIC = ("frontend",)
USER_FIELD = {"container": "Config.User", "image": "the image's USER", "default": "no user set"}


@check("SEC-070", Severity.CRITICAL)
def test_containers_are_not_privileged(
    service_containers: list[ContainerFacts], finding: Finding
) -> None:
    """The service's containers are not privileged.

    Risk: a privileged container holds every capability and every host device; root in it is
    root on the host (mount the host's disk, load a kernel module).
    """
    privileged = [c.name for c in service_containers if c.privileged]
    finding.expect(
        {c.name: c.privileged for c in service_containers},
        "HostConfig.Privileged=false",
        ok=not privileged,
        problem="; ".join(
            f"{name} runs privileged (HostConfig.Privileged=true)" for name in privileged
        ),
    )


@check("SEC-071", Severity.CRITICAL)
def test_no_engine_socket_is_mounted(
    service_containers: list[ContainerFacts], finding: Finding
) -> None:
    """No container of the service has the engine's socket (docker.sock, podman.sock) mounted.

    Risk: whoever reaches the engine's API starts a privileged container with the host's disk
    mounted: a compromised service becomes root on the host. Read-only does not help.
    """
    found = [(c.name, m) for c in service_containers for m in engine_socket_mounts(c.mounts)]
    finding.attach(
        "Mounts (source:destination)",
        "\n".join(f"{c.name}: {m.line()}" for c in service_containers for m in c.mounts)
        or "(none)",
    )
    finding.expect(
        len(found),
        "no engine socket",
        unit=Unit.COUNT,
        ok=not found,
        problem="; ".join(
            f"{name} mounts {m.line()} (Mounts: the engine's API)" for name, m in found
        ),
    )


@check("SEC-072", Severity.HIGH)
def test_no_host_namespaces(service_containers: list[ContainerFacts], finding: Finding) -> None:
    """The service's containers share no namespace with the host (network, PID, IPC).

    Risk: host networking reaches every port bound to the host's loopback and bypasses the
    published-port rules; the host's PID namespace shows (and, with a capability, signals or
    traces) every process; the host's IPC namespace reads other processes' shared memory.
    """
    finding.expect(
        {c.name: list(c.host_namespaces) for c in service_containers},
        "its own network, PID and IPC namespaces",
        ok=not any(c.host_namespaces for c in service_containers),
        problem="; ".join(
            f"{c.name} shares the host's {', '.join(c.host_namespaces)}"
            for c in service_containers
            if c.host_namespaces
        ),
    )


@check("SEC-073", Severity.HIGH)
def test_capabilities_dropped_and_no_new_privileges(
    service_containers: list[ContainerFacts], finding: Finding
) -> None:
    """The service's containers dropped their capabilities and set no-new-privileges.

    Risk: capabilities are root's powers in pieces: SYS_ADMIN, NET_ADMIN or SYS_PTRACE turn a
    compromised service into an escape; without no-new-privileges a setuid binary in the image
    gives a process back what was dropped.
    """
    problems = [
        f"{c.name} {problem} (HostConfig.CapAdd/CapDrop)"
        for c in service_containers
        for problem in capability_problems(set(c.held_caps))
    ] + [
        f"{c.name} lacks no-new-privileges (HostConfig.SecurityOpt: "
        f"{', '.join(sorted(c.security_opt)) or 'none'})"
        for c in service_containers
        if not c.no_new_privileges
    ]
    finding.expect(
        {
            c.name: {"capabilities": sorted(c.held_caps), "no_new_privileges": c.no_new_privileges}
            for c in service_containers
        },
        f"cap_drop: [ALL], cap_add only of {', '.join(sorted(NEEDED_CAPS))}, "
        "security_opt: [no-new-privileges:true]",
        ok=not problems,
        problem="; ".join(problems),
    )


@check("SEC-074", Severity.HIGH)
def test_containers_run_as_non_root(
    service_containers: list[ContainerFacts], finding: Finding
) -> None:
    """The service's containers run as a non-root user (their own user, else their image's).

    Risk: root in a container is root on the host's kernel; one escape bug, one writable host
    mount or one capability left away from owning the host.
    """
    root = [c for c in service_containers if runs_as_root(c.user)]
    finding.expect(
        {c.name: {"user": c.user, "from": c.user_from} for c in service_containers},
        "a non-root user",
        ok=not root,
        problem="; ".join(f"{c.name} runs as {c.user} ({USER_FIELD[c.user_from]})" for c in root),
    )


@check("SEC-075", Severity.MEDIUM)
def test_memory_and_pid_limits_set(
    service_containers: list[ContainerFacts], finding: Finding
) -> None:
    """The service's containers have a memory limit and a process-count (PID) limit.

    Risk: without them, one leaking or fork-bombed container takes the host's memory or its
    process table, and the kernel kills or starves whatever it picks, PostgreSQL included.
    """
    problems = [
        f"{c.name} has no memory limit (HostConfig.Memory=0)"
        for c in service_containers
        if not c.memory_limit_bytes
    ] + [
        f"{c.name} has no PID limit (HostConfig.PidsLimit unset)"
        for c in service_containers
        if not c.pids_limit
    ]
    finding.expect(
        {
            c.name: {"memory_limit_bytes": c.memory_limit_bytes, "pids_limit": c.pids_limit}
            for c in service_containers
        },
        "deploy.resources.limits memory and pids",
        ok=not problems,
        problem="; ".join(problems),
    )


def _public_services(inventory: Inventory) -> set[str]:
    named = {e.service for e in inventory.http.values() if e.kind == "frontend" and e.service}
    return named or set(DEFAULT_PUBLIC)


@check("SEC-076", Severity.HIGH)
def test_ports_published_on_specific_interfaces(
    compose_service: str,
    service_containers: list[ContainerFacts],
    inventory: Inventory,
    finding: Finding,
) -> None:
    """The service publishes its ports on a specific address, never all interfaces; only the
    public entry point (the frontend) beyond loopback.

    Risk: a port published on 0.0.0.0 is open to every network the host is on, past the host's
    firewall (the engine writes its own rules); PostgreSQL, Redis and Prometheus would face the
    internet with nothing but their passwords, and Prometheus has none.
    """
    public = compose_service in _public_services(inventory)
    problems = [
        f"{c.name} {problem} (HostConfig.PortBindings)"
        for c in service_containers
        for b in c.bindings
        if (problem := binding_problem(b, public))
    ]
    finding.expect(
        {c.name: [b.line() for b in c.bindings] for c in service_containers},
        "a specific address" + ("" if public else " on loopback (127.0.0.1)"),
        ok=not problems,
        problem="; ".join(problems),
    )


@check("SEC-077", Severity.HIGH)
def test_no_secrets_in_environment(
    service_containers: list[ContainerFacts], finding: Finding
) -> None:
    """No password, secret, token or key in clear in the image's or the container's ENV.

    Risk: ENV is readable by anyone who may `docker inspect` or pull the image, is copied into
    every child process and crash report, and lands in logs; a file (a compose secret) is not.
    """
    found = [(c.name, s) for c in service_containers for s in c.secrets]
    if found:
        finding.attach(
            "variables (values redacted)", "\n".join(f"{name}: {s.line()}" for name, s in found)
        )
    finding.expect(
        len(found),
        "a file under /run/secrets, its path in the ENV",
        unit=Unit.COUNT,
        ok=not found,
        problem="; ".join(
            f"{name} has {s.name} in clear in its {s.source}'s ENV "
            f"({'the image Config.Env' if s.source == 'image' else 'Config.Env'}, value redacted)"
            for name, s in found
        ),
    )


@check("SEC-078", Severity.MEDIUM)
def test_service_runs_as_the_compose_file_declares(
    compose_service: str,
    compose_declared: dict[str, Declared],
    project_containers: dict[str, list[ContainerFacts]],
    finding: Finding,
) -> None:
    """The service's containers run as the compose file declares them (image, user, ports,
    limits, capabilities, security options, privileged, namespaces).

    Risk: what was reviewed is the compose file; a container recreated by hand, from an
    override or from an old file runs with settings nobody reviewed, and the next `up` silently
    changes them again.
    """
    if compose_service not in compose_declared:
        pytest.skip(f"{compose_service}: not in `docker compose config` (behind a profile?)")
    want = compose_declared[compose_service]
    running = [c for c in project_containers.get(compose_service, []) if c.status == "running"]
    if not running:
        finding.observe("no container running", expected="as declared")
        finding.fail("declared in the compose file, but no container of it runs (expected one)")
    drifted = {c.name: found for c in running if (found := drift(want, c))}
    finding.attach(
        "drift (field: declared, running)",
        "\n".join(f"{name}: {line}" for name, found in drifted.items() for line in found) or "none",
    )
    finding.expect(
        sum(len(found) for found in drifted.values()),
        "as declared",
        unit=Unit.COUNT,
        ok=not drifted,
        problem="; ".join(f"{name} differs: {'; '.join(found)}" for name, found in drifted.items()),
    )


@check("SEC-079", Severity.MEDIUM)
def test_no_undeclared_service_runs(
    compose_file_services: frozenset[str], compose_project: ComposeProject, finding: Finding
) -> None:
    """Every container of the compose project belongs to a service the compose file declares.

    Risk: a container left from an old version of the file, or started by hand into the
    project, runs unreviewed and unpatched, on the project's network next to the database.
    """
    orphans = [s for s in compose_project.states() if s.service not in compose_file_services]
    finding.expect(
        {s.name: {"service": s.service or None, "status": s.status} for s in orphans},
        "only declared services (`docker compose up --remove-orphans`)",
        ok=not orphans,
        problem="; ".join(
            f"{s.name} belongs to service {s.service or '(no label)'}, which the compose file "
            f"does not declare ({s.status})"
            for s in orphans
        ),
    )


# --- issue 8: the heap of a Node service against its memory limit -----------------------------


def _heap(container: ContainerFacts) -> tuple[dict[str, int | None], str | None]:
    """(its heap and the most that fits its limit, in MiB; what is wrong) of one container."""
    options = container.node_options
    try:
        heap = max_old_space_mib(options) if options else None
    except ValueError as exc:
        return {"heap_mib": None}, f"{container.name}: NODE_OPTIONS {exc} (Config.Env)"
    limit = container.memory_limit_bytes
    budget = heap_budget_mib(limit) if limit else None
    seen = {"heap_mib": heap, "max_heap_mib": budget}
    if heap is None:
        return seen, None
    if limit is None or budget is None:
        problem = "but has no memory limit to fit it in (HostConfig.Memory=0)"
        return seen, f"{container.name} sets --max-old-space-size={heap} {problem}"
    if heap <= budget:
        return seen, None
    return seen, (
        f"{container.name} sets --max-old-space-size={heap} (Config.Env NODE_OPTIONS): "
        f"{heap} MiB is more than {NODE_HEAP_SHARE:.0%} of its {mib(limit)} memory limit "
        f"(at most {budget} MiB)"
    )


@pytest.mark.resources
@check("SEC-080", Severity.MEDIUM)
def test_node_heap_fits_memory_limit(
    compose_project: ComposeProject,
    compose_service: str,
    service_containers: list[ContainerFacts],
    finding: Finding,
) -> None:
    """NODE_OPTIONS' --max-old-space-size fits the container's memory limit (at most 75%).

    Risk: a V8 heap allowed to grow past the container's limit never collects in time: the
    kernel kills the process with SIGKILL at the limit, mid-request, with no "heap out of memory"
    error to tell why.

    Node.js services only (the runbook's NODE_OPTIONS=--max-old-space-size=1536, 75% of its 2G
    limit): a service that runs no node, npm or the like and sets no NODE_OPTIONS (the
    reference backend is Python, the frontend nginx) is not applicable, saying so.
    """
    states = compose_project.states(compose_service)
    if states and not any(s.node for s in states):
        runs = " ".join(states[0].command[:3]) or "no command"
        pytest.skip(f"not applicable: {compose_service} is not a Node service (it runs {runs})")
    judged = {c.name: _heap(c) for c in service_containers}
    problems = [problem for _, problem in judged.values() if problem]
    finding.expect(
        {name: seen for name, (seen, _) in judged.items()},
        f"--max-old-space-size <= {NODE_HEAP_SHARE:.0%} of the memory limit, or not set",
        ok=not problems,
        problem="; ".join(problems),
    )
