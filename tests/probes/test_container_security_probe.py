"""opsbook/probes/container_security.py: what `docker inspect` and `docker compose config` mean
to the container audit, on recorded shapes of Docker's and Podman's answers (no engine)."""

from __future__ import annotations

from typing import Any

import pytest

from opsbook.probes.container_security import (
    ALL,
    DOCKER_DEFAULT_CAPS,
    Binding,
    Mount,
    binding_problem,
    bindings,
    capability_problems,
    container_facts,
    declared,
    drift,
    engine_socket_mounts,
    heap_budget_mib,
    held_capabilities,
    host_namespaces,
    image_name,
    max_old_space_mib,
    no_new_privileges,
    runs_as_root,
    secret_variables,
)

# Podman 4.3's Docker API for `cap_drop: [ALL]`: the Docker defaults it dropped, one by one.
PODMAN_DROP_ALL = sorted(DOCKER_DEFAULT_CAPS)
# Podman's own default set, reported against Docker's.
PODMAN_DEFAULT_DROP = ["AUDIT_WRITE", "MKNOD", "NET_RAW"]


@pytest.mark.parametrize(
    ("cap_add", "cap_drop", "held"),
    [
        ([], ["ALL"], set()),  # Docker
        ([], PODMAN_DROP_ALL, set()),  # Podman
        (["NET_BIND_SERVICE"], ["ALL"], {"NET_BIND_SERVICE"}),
        (["CAP_SYS_ADMIN"], PODMAN_DROP_ALL, {"SYS_ADMIN"}),
        (["ALL"], [], {ALL}),
        (None, None, set(DOCKER_DEFAULT_CAPS)),
    ],
)
def test_held_capabilities_whatever_the_engine_reports(cap_add, cap_drop, held) -> None:
    assert held_capabilities(cap_add, cap_drop) == held


def test_capability_problems() -> None:
    assert capability_problems(set()) == []
    assert capability_problems({"NET_BIND_SERVICE", "CHOWN"}) == []
    assert capability_problems({"SYS_ADMIN"}) == ["holds dangerous SYS_ADMIN"]
    assert capability_problems({ALL}) == ["holds ALL capabilities (privileged, or cap_add: [ALL])"]
    # Engine defaults not dropped fail on both engines.
    podman_default = held_capabilities([], PODMAN_DEFAULT_DROP)
    assert (
        capability_problems(podman_default)
        == [
            "keeps FSETID, SETPCAP, SYS_CHROOT (capabilities not dropped)",
            "holds dangerous SETFCAP",
        ][::-1]
    )
    docker_default = capability_problems(set(DOCKER_DEFAULT_CAPS))
    assert docker_default[0] == "holds dangerous MKNOD, NET_RAW, SETFCAP"
    assert "AUDIT_WRITE" in docker_default[1]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["no-new-privileges"], True),  # Podman
        (["no-new-privileges:true"], True),  # Docker, compose
        (["no-new-privileges=true"], True),
        (["no-new-privileges:false"], False),
        (["seccomp=unconfined"], False),
        (None, False),
    ],
)
def test_no_new_privileges(options, expected) -> None:
    assert no_new_privileges(options) is expected


@pytest.mark.parametrize(
    ("user", "root"),
    [("", True), ("root", True), ("0", True), ("0:0", True), ("root:app", True),
     ("app", False), ("10001", False), ("10001:10001", False), ("www-data", False)],
)  # fmt: skip
def test_runs_as_root(user: str, root: bool) -> None:
    assert runs_as_root(user) is root


def test_engine_socket_mounts() -> None:
    found = [
        Mount("/tmp/x/docker.sock", "/var/run/docker.sock", True),
        Mount("/run/podman/podman.sock", "/engine", False),
        Mount("/var/run", "/host-run", True),
        Mount("/srv/secrets/chat_app.password", "/run/secrets/chat_app.password", True),
        Mount("", "/var/lib/postgresql/data", False),
    ]
    assert engine_socket_mounts(found) == found[:3]


def test_host_namespaces() -> None:
    assert host_namespaces({"NetworkMode": "bridge", "PidMode": "private", "IpcMode": ""}) == []
    assert host_namespaces({"NetworkMode": "host", "PidMode": "host", "IpcMode": "host"}) == [
        "network (NetworkMode=host)",
        "PID (PidMode=host)",
        "IPC (IpcMode=host)",
    ]


def test_bindings_and_their_problems() -> None:
    host_config = {
        "PortBindings": {
            "8000/tcp": None,  # EXPOSEd by the image, not published
            "8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "43017"}],
            "9090/tcp": [{"HostIp": "0.0.0.0", "HostPort": "9090"}],
            "5432/tcp": [{"HostIp": "", "HostPort": "5432"}, {"HostIp": "::", "HostPort": "5432"}],
            "6379/tcp": [{"HostIp": "10.0.0.5", "HostPort": "6379"}],
        }
    }
    found = bindings(host_config)
    assert [b.line() for b in found] == [
        "0.0.0.0:5432->5432/tcp",
        "[::]:5432->5432/tcp",
        "10.0.0.5:6379->6379/tcp",
        "127.0.0.1:43017->8080/tcp",
        "0.0.0.0:9090->9090/tcp",
    ]
    problems = [binding_problem(b, public=False) for b in found]
    assert problems[0] == "publishes 0.0.0.0:5432->5432/tcp on all interfaces"
    assert problems[2] is not None
    assert problems[2].startswith("publishes 10.0.0.5:6379->6379/tcp beyond loopback")
    assert problems[3] is None
    # The public entry point may be on a specific non-loopback address, never on all of them.
    assert binding_problem(Binding("10.0.0.5", "443", "8080/tcp"), public=True) is None
    assert binding_problem(Binding("::1", "443", "8080/tcp"), public=False) is None
    assert binding_problem(Binding("0.0.0.0", "443", "8080/tcp"), public=True) is not None


def test_secret_variables_never_show_the_value() -> None:
    env = [
        "SECRET_TOKEN=canary-value",
        "DB_PASSWORD_FILE=/run/secrets/db",  # a pointer to a file
        "REDIS_PASSWORD=/run/secrets/redis",  # a path, not a password
        "API_KEY=",  # empty
        "GPG_KEY=A035C8C19219BA821ECEA86B64E628F8D684696D",  # a public fingerprint
        "AWS_SECRET_ACCESS_KEY=abc/def+ghi",
        "PATH=/usr/bin",
    ]
    found = secret_variables(env, "container")
    assert [s.name for s in found] == ["SECRET_TOKEN", "AWS_SECRET_ACCESS_KEY"]
    assert found[0].line() == "container ENV SECRET_TOKEN (value redacted, 12 chars)"
    assert "canary-value" not in repr(found)


def test_node_options() -> None:
    assert max_old_space_mib("--max-old-space-size=192") == 192
    assert max_old_space_mib("--enable-source-maps --max_old_space_size 512") == 512
    assert max_old_space_mib("--max-old-space-size=100 --max-old-space-size=300") == 300
    assert max_old_space_mib("--enable-source-maps") is None
    with pytest.raises(ValueError, match="no number of MiB"):
        max_old_space_mib("--max-old-space-size=lots")
    assert heap_budget_mib(256 * 2**20) == 192
    assert heap_budget_mib(128 * 2**20) == 96


def test_image_names() -> None:
    assert image_name("redis") == image_name("docker.io/library/redis:latest")
    assert image_name("localhost/opsbook-app:dev") == "localhost/opsbook-app:dev"
    assert image_name("localhost:5000/app") == "localhost:5000/app:latest"


# A trimmed `docker inspect` of the reference worker on Podman, hardened as compose.yaml says.
def _attrs(**host: Any) -> dict[str, Any]:
    host_config = {
        "Privileged": False,
        "CapAdd": [],
        "CapDrop": PODMAN_DROP_ALL,
        "SecurityOpt": ["no-new-privileges"],
        "NetworkMode": "bridge",
        "PidMode": "private",
        "IpcMode": "shareable",
        "Memory": 268435456,
        "PidsLimit": 64,
        "NanoCpus": 0,
        "ReadonlyRootfs": True,
        "PortBindings": {"8000/tcp": None},
        **host,
    }
    return {
        "Name": "/p-worker-1",
        "Image": "sha256:14c4",
        "State": {"Status": "running"},
        "Config": {
            "User": "app",
            "Image": "localhost/opsbook-app:dev",
            "Labels": {"com.docker.compose.service": "worker"},
            "Env": ["PATH=/usr/bin", "PYTHONPATH=/app", "HOSTNAME=abc", "container=podman"],
        },
        "HostConfig": host_config,
        "Mounts": [],
    }


IMAGE = {"User": "app", "Env": ["PATH=/usr/bin", "PYTHONPATH=/app"]}
WORKER = {
    "image": "localhost/opsbook-app:dev",
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges:true"],
    "read_only": True,
    "deploy": {"resources": {"limits": {"memory": "268435456", "pids": 64}}},
}


def test_container_facts_and_no_drift_when_as_declared() -> None:
    facts = container_facts(_attrs(), IMAGE)
    assert (facts.name, facts.service, facts.user, facts.user_from) == (
        "p-worker-1", "worker", "app", "container",
    )  # fmt: skip
    assert facts.held_caps == frozenset()
    assert facts.no_new_privileges
    assert (facts.memory_limit_bytes, facts.pids_limit, facts.bindings) == (268435456, 64, ())
    assert facts.secrets == ()
    assert facts.environment == ()
    assert drift(declared(WORKER), facts) == []


def test_user_falls_back_to_the_image() -> None:
    attrs = _attrs()
    attrs["Config"]["User"] = ""  # Docker leaves it empty
    assert container_facts(attrs, IMAGE).user_from == "image"
    assert container_facts(attrs, {}).user == "root"


def test_privileged_holds_every_capability() -> None:
    facts = container_facts(_attrs(Privileged=True, CapDrop=["SYS_RESOURCE"]), IMAGE)
    assert facts.held_caps == {ALL}


def test_drift_names_each_field() -> None:
    attrs = _attrs(
        Privileged=True,
        Memory=0,
        PidsLimit=2048,
        SecurityOpt=[],
        PidMode="host",
        PortBindings={"9999/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41000"}]},
    )
    attrs["Config"]["User"] = "root"
    attrs["Config"]["Image"] = "localhost/opsbook-app:old"
    attrs["Config"]["Env"].append("SECRET_TOKEN=canary-value")
    found = drift(declared(WORKER), container_facts(attrs, IMAGE))
    assert found == [
        "image: declared localhost/opsbook-app:dev, running localhost/opsbook-app:old",
        "user: declared app (the image's USER), running root",
        "port: declared nothing, running 0.0.0.0:41000->9999/tcp",
        "memory limit: declared 256 MiB, running none",
        "pids limit: declared 64, running 2048",
        "capabilities held: declared none, running ALL",
        "security_opt: declared no-new-privileges, running none",
        "privileged: declared false, running true",
        "environment: SECRET_TOKEN declared not set, running set (value not shown)",
        "host namespaces: declared none, running PID (PidMode=host)",
    ]
    assert "canary-value" not in repr(found)


def test_declared_ports_with_any_host_port() -> None:
    service = {**WORKER, "ports": [{"host_ip": "127.0.0.1", "target": 8000, "protocol": "tcp"}]}
    published = _attrs(PortBindings={"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "40001"}]})
    assert drift(declared(service), container_facts(published, IMAGE)) == []
    assert drift(declared(service), container_facts(_attrs(), IMAGE)) == [
        "port: declared 127.0.0.1:(any)->8000/tcp, running not published"
    ]


def test_declared_environment_matches_by_value_without_keeping_it() -> None:
    service = {**WORKER, "environment": {"PYTHONPATH": "/app", "LOG_LEVEL": "info"}}
    attrs = _attrs()
    attrs["Config"]["Env"].append("LOG_LEVEL=debug")
    assert drift(declared(service), container_facts(attrs, IMAGE)) == [
        "environment: LOG_LEVEL declared one value, running another (not shown)"
    ]
