"""The container part of the security audit: what runs, as `docker inspect` shows it, and what
the compose file declares, as `docker compose config --format json` shows it.

`audit_facts` reads every container of the project and its image once through the docker SDK;
`compose_config` runs `docker compose config` (with a timeout). Both return typed facts,
built by the pure functions below (tested on recorded answers, without an engine);
checks/test_containers_security.py decides what they mean. No environment value is kept, except
NODE_OPTIONS and, only to be masked in every report, the secrets found in clear.

Engines tell the same facts differently, and these readers judge what a container holds, not how
it was asked for:

- capabilities: Docker shows `cap_drop: [ALL]` as CapDrop ["ALL"]; Podman's Docker API expands it
  into the list of Docker's default capabilities it dropped. Both are read as "the set held".
- Config.User: Podman copies the image's USER into it; Docker leaves it empty, and then the
  image's USER applies.
- PidsLimit: Podman sets 2048 when nothing asks for a limit (containers.conf); Docker leaves it 0.
- IpcMode: Podman 4.3 reports `shareable` even for a container in the host's IPC namespace, so a
  host IPC namespace cannot be seen through its API.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import shlex
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from msgspec import Struct

from opsbook.errors import NotEvaluated
from opsbook.inventory import compose_size_bytes
from opsbook.probes.containers import (
    SERVICE_LABEL,
    ComposeProject,
    asking_engine,
    cpus_limit,
    memory_limit_bytes,
)

if TYPE_CHECKING:
    from opsbook.inventory import Compose

# --- capabilities -----------------------------------------------------------------------------

# What Docker gives every container (moby's oci/caps/defaults.go); Podman gives fewer and reports
# CapAdd/CapDrop against this set.
DOCKER_DEFAULT_CAPS = frozenset(
    {
        "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
        "NET_BIND_SERVICE", "NET_RAW", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
    }
)  # fmt: skip
# What a service may add back after dropping all: binding a port below 1024, and what an
# entrypoint needs to hand files and the process to its own user before it drops privileges.
NEEDED_CAPS = frozenset(
    {"NET_BIND_SERVICE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID", "KILL"}
)
# Each of these is a known way out of the container or into the host's other processes
# (CIS Docker Benchmark 5.3; SYS_ADMIN is "the new root").
DANGEROUS_CAPS = frozenset(
    {
        "SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE", "SYS_MODULE", "SYS_RAWIO", "DAC_READ_SEARCH",
        "SYS_BOOT", "SYS_TIME", "MAC_ADMIN", "MAC_OVERRIDE", "BPF", "PERFMON", "SYSLOG",
        "LINUX_IMMUTABLE", "AUDIT_CONTROL", "SYS_RESOURCE", "NET_RAW", "MKNOD", "SETFCAP",
    }
)  # fmt: skip
ALL = "ALL"


def capability(name: str) -> str:
    """`cap_sys_admin`, `CAP_SYS_ADMIN` and `SYS_ADMIN` are one capability: `SYS_ADMIN`."""
    upper = name.strip().upper()
    return upper.removeprefix("CAP_")


def held_capabilities(cap_add: Iterable[str] | None, cap_drop: Iterable[str] | None) -> set[str]:
    """The capabilities a container holds, from its HostConfig's CapAdd and CapDrop (or compose's
    cap_add and cap_drop): ALL stands for every capability."""
    added = {capability(c) for c in cap_add or ()}
    dropped = {capability(c) for c in cap_drop or ()}
    if ALL in added:
        return {ALL}
    if ALL in dropped:
        return added
    return set(DOCKER_DEFAULT_CAPS - dropped) | added


def capability_problems(held: set[str]) -> list[str]:
    """What is wrong with the capabilities held: dangerous ones, then defaults not dropped."""
    if ALL in held:
        return ["holds ALL capabilities (privileged, or cap_add: [ALL])"]
    problems = []
    dangerous = sorted(held & DANGEROUS_CAPS)
    if dangerous:
        problems.append(f"holds dangerous {', '.join(dangerous)}")
    kept = sorted(held - NEEDED_CAPS - DANGEROUS_CAPS)
    if kept:
        problems.append(f"keeps {', '.join(kept)} (capabilities not dropped)")
    return problems


# Patterns are compiled when first used (re caches them): every run imports this module.
_OPTION = r"^\s*(?P<key>[^:=]+?)\s*(?:[:=]\s*(?P<value>.*?))?\s*$"


def no_new_privileges(security_opt: Iterable[str] | None) -> bool:
    """`no-new-privileges`, `no-new-privileges:true` or `=true` in SecurityOpt / security_opt."""
    for option in security_opt or ():
        match = re.match(_OPTION, option)
        if match and match["key"] == "no-new-privileges":
            return (match["value"] or "true").lower() in ("true", "1")
    return False


def security_options(security_opt: Iterable[str] | None) -> set[str]:
    """SecurityOpt as a comparable set: `no-new-privileges:true` and `no-new-privileges` are one."""
    result = set()
    for option in security_opt or ():
        if option.startswith("no-new-privileges"):
            if no_new_privileges([option]):
                result.add("no-new-privileges")
            continue
        result.add(option.replace("=", ":", 1))
    return result


# --- users ------------------------------------------------------------------------------------


def effective_user(container_user: str | None, image_user: str | None) -> str:
    """Who the container's process runs as: its own User, else its image's USER, else root."""
    return (container_user or "").strip() or (image_user or "").strip() or "root"


def runs_as_root(user: str) -> bool:
    """`root`, `0`, `root:GROUP`, `0:GROUP` or nothing at all (the engine's default is root)."""
    name = user.strip().split(":", 1)[0]
    return name in ("", "root", "0")


# --- mounts and namespaces --------------------------------------------------------------------

ENGINE_SOCKETS = ("docker.sock", "podman.sock", "containerd.sock", "crio.sock")
# Directories that hold an engine's socket: mounting one mounts the socket with it.
SOCKET_DIRECTORIES = frozenset(
    {"/run", "/var/run", "/run/docker", "/var/run/docker", "/run/podman", "/var/run/podman",
     "/run/containerd", "/var/run/containerd", "/run/user"}
)  # fmt: skip


class Mount(Struct, frozen=True):
    source: str
    destination: str
    read_only: bool

    def line(self) -> str:
        return f"{self.source or '(volume)'}:{self.destination}{':ro' if self.read_only else ''}"


def mounts(attrs: Mapping[str, Any]) -> list[Mount]:
    return [
        Mount(str(m.get("Source") or ""), str(m.get("Destination") or ""), not m.get("RW", True))
        for m in attrs.get("Mounts") or []
    ]


def engine_socket_mounts(found: Iterable[Mount]) -> list[Mount]:
    """Mounts that hand the container the engine's API: a socket by its name, on either side, or
    a directory that holds one. Read-only does not help: a socket is written by connecting."""
    risky = []
    for mount in found:
        names = (mount.source.rsplit("/", 1)[-1], mount.destination.rsplit("/", 1)[-1])
        if any(n in ENGINE_SOCKETS for n in names) or mount.source.rstrip("/") in (
            SOCKET_DIRECTORIES
        ):
            risky.append(mount)
    return risky


# Which namespace each HostConfig field shares with the host when it says `host`.
NAMESPACE_FIELDS = (("network", "NetworkMode"), ("PID", "PidMode"), ("IPC", "IpcMode"))


def host_namespaces(host_config: Mapping[str, Any]) -> list[str]:
    """`network (NetworkMode=host)` for each namespace the container shares with the host."""
    return [
        f"{what} ({key}=host)"
        for what, key in NAMESPACE_FIELDS
        if str(host_config.get(key) or "") == "host"
    ]


# --- published ports --------------------------------------------------------------------------

ALL_INTERFACES = frozenset({"", "0.0.0.0", "::", "[::]"})  # noqa: S104 (what is looked for)


class Binding(Struct, frozen=True):
    """One published port: `127.0.0.1:43017->8080/tcp`."""

    host_ip: str
    host_port: str
    container_port: str  # 8080/tcp

    def line(self) -> str:
        host = self.host_ip or "0.0.0.0"  # noqa: S104 (how docker ps shows an empty HostIp)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.host_port or '(any)'}->{self.container_port}"

    @property
    def all_interfaces(self) -> bool:
        return self.host_ip in ALL_INTERFACES

    @property
    def loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.host_ip.strip("[]")).is_loopback
        except ValueError:
            return self.host_ip == "localhost"


def bindings(host_config: Mapping[str, Any]) -> list[Binding]:
    """HostConfig.PortBindings; a port the image EXPOSEs without publishing it maps to null."""
    result = []
    for port, published in sorted((host_config.get("PortBindings") or {}).items()):
        for entry in published or []:
            result.append(
                Binding(str(entry.get("HostIp") or ""), str(entry.get("HostPort") or ""), port)
            )
    return result


def binding_problem(binding: Binding, public: bool) -> str | None:
    """Why a published port is exposed too widely, or None."""
    if binding.all_interfaces:
        return f"publishes {binding.line()} on all interfaces"
    if not public and not binding.loopback:
        return (
            f"publishes {binding.line()} beyond loopback (only the public entry point may be "
            "reachable from other hosts)"
        )
    return None


# --- secrets in the environment ---------------------------------------------------------------

# Patterns of variable names, not secrets (S105).
SECRET_NAME = r"(?i)PASSWORD|PASSWD|SECRET|TOKEN|KEY|CREDENTIAL"  # noqa: S105
# Names that match but hold no secret: public keys and key fingerprints (official images set
# GPG_KEY to the fingerprint that verified their download), and pointers to secret files.
NOT_SECRET_NAME = r"(?i)PUBLIC|GPG_KEYS?$|_(FILE|PATH|DIR)$"  # noqa: S105


class SecretVariable(Struct, frozen=True):
    """An environment variable that holds a secret in clear. The value is kept only to be masked
    in every report; it is left out of repr (`--showlocals`) and of every message."""

    name: str
    source: str  # image, container
    length: int
    value: str

    def __repr__(self) -> str:  # the value never: `--showlocals` prints reprs
        return f"SecretVariable(name={self.name!r}, source={self.source!r}, length={self.length})"

    def line(self) -> str:
        # Never `NAME=...`: the reports' redactor would take even a placeholder for a value.
        return f"{self.source} ENV {self.name} (value redacted, {self.length} chars)"


def is_file_reference(value: str) -> bool:
    """An absolute path or a file: URL names where the secret is; it is not the secret."""
    text = value.strip()
    return text.startswith(("/", "file:")) and not any(c.isspace() for c in text)


def secret_variables(env: Sequence[str] | None, source: str) -> list[SecretVariable]:
    """The `NAME=value` entries of an ENV list whose name says secret and whose value is one."""
    found = []
    for entry in env or ():
        name, _, value = entry.partition("=")
        if not re.search(SECRET_NAME, name) or re.search(NOT_SECRET_NAME, name):
            continue
        if not value.strip() or is_file_reference(value):
            continue
        found.append(SecretVariable(name, source, len(value), value))
    return found


# What engines add to every container's ENV on their own (Podman: TERM, container, HOME).
ENGINE_VARIABLES = frozenset({"HOSTNAME", "HOME", "TERM", "container", "PATH"})


def digest(value: str) -> str:
    """A short fingerprint of a value, to compare two values without keeping either."""
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def added_environment(env: Sequence[str] | None, image_env: Sequence[str] | None) -> tuple[
    tuple[str, str], ...
]:  # fmt: skip
    """The container's variables that its image does not set to the same value (the engine's own
    left out), as sorted (name, digest of the value) pairs."""
    from_image = {entry.partition("=")[0]: entry.partition("=")[2] for entry in image_env or ()}
    added = {}
    for entry in env or ():
        name, _, value = entry.partition("=")
        if name in ENGINE_VARIABLES or from_image.get(name) == value:
            continue
        added[name] = digest(value)
    return tuple(sorted(added.items()))


def env_value(env: Sequence[str] | None, name: str) -> str | None:
    """The value of one variable of an ENV list (the last one wins, as in the engine)."""
    value = None
    for entry in env or ():
        key, sep, rest = entry.partition("=")
        if key == name and sep:
            value = rest
    return value


# --- NODE_OPTIONS against the memory limit ----------------------------------------------------

# V8's old space is only part of a Node process: the young generation, code space, Buffers and
# ArrayBuffers (outside the V8 heap), thread stacks, libuv's pool and the binary itself need the
# rest. With the heap at most 75% of the limit, V8 collects hard and fails with a readable "heap
# out of memory" before the kernel's OOM killer sends SIGKILL, which leaves no trace.
NODE_HEAP_SHARE = 0.75
_MAX_OLD_SPACE = r"^--max[-_]old[-_]space[-_]size(?:=(?P<value>.*))?$"


def max_old_space_mib(node_options: str) -> int | None:
    """`--max-old-space-size=N` (or `... N`, or with underscores) in NODE_OPTIONS, in MiB; the
    last one wins, as in Node. None when absent; ValueError when not a number."""
    words = shlex.split(node_options)
    found = None
    for index, word in enumerate(words):
        match = re.match(_MAX_OLD_SPACE, word)
        if not match:
            continue
        value = match["value"]
        if value is None:
            value = words[index + 1] if index + 1 < len(words) else ""
        if not value.strip().isdigit():
            raise ValueError(f"--max-old-space-size has no number of MiB: {word} {value}".strip())
        found = int(value)
    return found


def heap_budget_mib(memory_limit: int) -> int:
    """The largest max-old-space-size (MiB) that fits a memory limit of that many bytes."""
    return int(memory_limit * NODE_HEAP_SHARE) // 2**20


# --- one container, as the audit sees it ------------------------------------------------------


class ContainerFacts(Struct, frozen=True):
    """What the audit reads of one container and its image. No environment value is kept, except
    NODE_OPTIONS; secret values only inside SecretVariable, masked."""

    name: str
    service: str
    status: str
    image: str  # Config.Image: the name it was created from
    privileged: bool
    held_caps: frozenset[str]
    security_opt: frozenset[str]
    user: str  # effective: the container's, else the image's
    user_from: str  # container, image, default
    image_user: str  # the image's USER ("" when it sets none)
    mounts: tuple[Mount, ...]
    host_namespaces: tuple[str, ...]
    bindings: tuple[Binding, ...]
    memory_limit_bytes: int | None
    cpus_limit: float | None
    pids_limit: int | None
    read_only: bool
    secrets: tuple[SecretVariable, ...]
    node_options: str | None
    # The variables the container sets beyond its image's, as name -> digest of the value: what
    # the compose file's `environment` is compared with, without keeping a value.
    environment: tuple[tuple[str, str], ...] = ()
    image_environment: tuple[tuple[str, str], ...] = ()  # the image's ENV, the same way

    @property
    def no_new_privileges(self) -> bool:
        return "no-new-privileges" in self.security_opt


def container_facts(
    attrs: Mapping[str, Any], image_config: Mapping[str, Any] | None
) -> ContainerFacts:
    """The facts of `docker inspect CONTAINER` and the Config of `docker image inspect`."""
    host_config = attrs.get("HostConfig") or {}
    config = attrs.get("Config") or {}
    image = image_config or {}
    labels = config.get("Labels") or {}
    container_user = str(config.get("User") or "").strip()
    image_user = str(image.get("User") or "").strip()
    user_from = "container" if container_user else "image" if image_user else "default"
    pids = int(host_config.get("PidsLimit") or 0)
    image_env = image.get("Env") or []
    container_env = config.get("Env") or []
    # The container's ENV repeats the image's: a secret baked into the image is named once, as
    # the image's; one given at run time (or changed) as the container's.
    in_image = secret_variables(image_env, "image")
    baked = {(s.name, s.value) for s in in_image}
    in_container = [
        s for s in secret_variables(container_env, "container") if (s.name, s.value) not in baked
    ]
    return ContainerFacts(
        name=str(attrs.get("Name", "")).lstrip("/"),
        service=str(labels.get(SERVICE_LABEL, "")),
        status=str((attrs.get("State") or {}).get("Status") or "unknown"),
        image=str(config.get("Image") or ""),
        privileged=bool(host_config.get("Privileged")),
        # Privileged holds every capability, whatever CapDrop says (Podman shows one dropped).
        held_caps=frozenset(
            {ALL}
            if host_config.get("Privileged")
            else held_capabilities(host_config.get("CapAdd"), host_config.get("CapDrop"))
        ),
        security_opt=frozenset(security_options(host_config.get("SecurityOpt"))),
        user=effective_user(container_user, image_user),
        user_from=user_from,
        image_user=image_user,
        mounts=tuple(mounts(attrs)),
        host_namespaces=tuple(host_namespaces(host_config)),
        bindings=tuple(bindings(host_config)),
        memory_limit_bytes=memory_limit_bytes(host_config),
        cpus_limit=cpus_limit(host_config),
        pids_limit=pids if pids > 0 else None,
        read_only=bool(host_config.get("ReadonlyRootfs")),
        secrets=(*in_image, *in_container),
        node_options=env_value(container_env, "NODE_OPTIONS"),
        environment=added_environment(container_env, image_env),
        image_environment=added_environment(image_env, ()),
    )


# --- the compose file against what runs -------------------------------------------------------


def image_name(name: str) -> str:
    """`redis`, `docker.io/library/redis:latest` and `redis:latest` are one image name."""
    text = name.strip()
    for prefix in ("docker.io/library/", "docker.io/", "index.docker.io/library/"):
        text = text.removeprefix(prefix)
    if "@" not in text and ":" not in text.rsplit("/", 1)[-1]:
        text += ":latest"
    return text


def _bytes(value: Any) -> int | None:
    """compose config's memory ("268435456", or "256M" from an older compose) in bytes."""
    return None if value in (None, "", 0, "0") else compose_size_bytes(value)


class Declared(Struct, frozen=True):
    """What `docker compose config --format json` declares for one service (the parts compared)."""

    image: str | None
    user: str | None
    ports: tuple[tuple[str, str, str], ...]  # (host_ip, published or "", "8000/tcp")
    memory_limit_bytes: int | None
    cpus_limit: float | None
    pids_limit: int | None
    held_caps: frozenset[str]
    security_opt: frozenset[str]
    privileged: bool
    read_only: bool
    namespaces: tuple[str, ...]
    environment: tuple[tuple[str, str], ...] = ()  # (name, digest of the value)


def declared(service: Mapping[str, Any]) -> Declared:
    """One service of `docker compose config --format json` (interpolated, long syntax)."""
    limits = ((service.get("deploy") or {}).get("resources") or {}).get("limits") or {}
    memory = _bytes(limits.get("memory")) or _bytes(service.get("mem_limit"))
    cpus = limits.get("cpus") or service.get("cpus")
    pids = limits.get("pids") or service.get("pids_limit")
    ports = []
    for port in service.get("ports") or []:
        host_ip = str(port.get("host_ip") or "")
        published = str(port.get("published") or "")
        ports.append((host_ip, published, f"{port.get('target')}/{port.get('protocol') or 'tcp'}"))
    namespaces = host_namespaces(
        {
            "NetworkMode": service.get("network_mode"),
            "PidMode": service.get("pid"),
            "IpcMode": service.get("ipc"),
        }
    )
    return Declared(
        image=str(service["image"]) if service.get("image") else None,
        user=str(service["user"]) if service.get("user") is not None else None,
        ports=tuple(sorted(ports)),
        memory_limit_bytes=memory,
        cpus_limit=float(cpus) if cpus else None,
        pids_limit=int(pids) if pids and int(pids) > 0 else None,
        held_caps=frozenset(held_capabilities(service.get("cap_add"), service.get("cap_drop"))),
        security_opt=frozenset(security_options(service.get("security_opt"))),
        privileged=bool(service.get("privileged")),
        read_only=bool(service.get("read_only")),
        namespaces=tuple(namespaces),
        environment=tuple(
            sorted(
                (str(name), digest("" if value is None else str(value)))
                for name, value in (service.get("environment") or {}).items()
            )
        ),
    )


def _caps(caps: Iterable[str]) -> str:
    return ",".join(sorted(caps)) or "none"


def _mib(count: int | None) -> str:
    return f"{count / 2**20:g} MiB" if count else "none"


def _port_matches(declared_port: tuple[str, str, str], binding: Binding) -> bool:
    host_ip, published, target = declared_port
    same_ip = (host_ip in ALL_INTERFACES and binding.all_interfaces) or host_ip == binding.host_ip
    return same_ip and target == binding.container_port and published in ("", binding.host_port)


def drift(want: Declared, running: ContainerFacts) -> list[str]:
    """Where a running container differs from its service in the compose file:
    `memory limit: declared 256 MiB, running none`."""
    found = []

    def differs(what: str, declared_value: object, running_value: object) -> None:
        found.append(f"{what}: declared {declared_value}, running {running_value}")

    if want.image and image_name(want.image) != image_name(running.image):
        differs("image", want.image, running.image)
    # Without a declared user, the image's USER is what was reviewed.
    want_user = want.user if want.user is not None else running.image_user or "root"
    if want_user != running.user:
        shown = want_user if want.user is not None else f"{want_user} (the image's USER)"
        differs("user", shown, running.user)
    for port in want.ports:
        if not any(_port_matches(port, b) for b in running.bindings):
            host_ip, published, target = port
            shown = f"{host_ip or '0.0.0.0'}:{published or '(any)'}->{target}"  # noqa: S104
            differs("port", shown, "not published")
    for binding in running.bindings:
        if not any(_port_matches(port, binding) for port in want.ports):
            differs("port", "nothing", binding.line())
    if want.memory_limit_bytes != running.memory_limit_bytes:
        differs("memory limit", _mib(want.memory_limit_bytes), _mib(running.memory_limit_bytes))
    want_cpus, running_cpus = want.cpus_limit, running.cpus_limit
    if (want_cpus or None) != (running_cpus or None) and not (
        want_cpus and running_cpus and abs(want_cpus - running_cpus) < 1e-3
    ):
        differs("cpu limit", want_cpus or "none", running_cpus or "none")
    # Without a declared PID limit the engine picks its own (Podman 2048): only a declared one
    # can drift.
    if want.pids_limit is not None and want.pids_limit != running.pids_limit:
        differs("pids limit", want.pids_limit, running.pids_limit or "none")
    if want.held_caps != running.held_caps:
        differs("capabilities held", _caps(want.held_caps), _caps(running.held_caps))
    if want.security_opt != running.security_opt:
        differs("security_opt", _caps(want.security_opt) or "none", _caps(running.security_opt))
    if want.privileged != running.privileged:
        differs("privileged", str(want.privileged).lower(), str(running.privileged).lower())
    if want.read_only != running.read_only:
        differs("read_only", str(want.read_only).lower(), str(running.read_only).lower())
    # `environment: NAME declared ...`: never `NAME: value`, which reads as a secret to mask.
    want_env, running_env = dict(want.environment), dict(running.environment)
    for name in sorted(want_env.keys() | running_env.keys()):
        if name not in running_env:
            # The image may set the same value itself: the container then shows nothing added.
            if dict(running.image_environment).get(name) != want_env[name]:
                found.append(f"environment: {name} declared set, running not set")
        elif name not in want_env:
            found.append(f"environment: {name} declared not set, running set (value not shown)")
        elif want_env[name] != running_env[name]:
            found.append(f"environment: {name} declared one value, running another (not shown)")
    if set(want.namespaces) != set(running.host_namespaces):
        differs(
            "host namespaces",
            ", ".join(want.namespaces) or "none",
            ", ".join(running.host_namespaces) or "none",
        )
    return found


# --- the observations -------------------------------------------------------------------------


def audit_facts(project: ComposeProject) -> dict[str, list[ContainerFacts]]:
    """The facts of every container of the project (stopped ones too: they run again on the
    next start), by compose service; each image is read once."""
    images: dict[str, Mapping[str, Any] | None] = {}
    result: dict[str, list[ContainerFacts]] = {}
    for container in project.containers():
        attrs = container.attrs
        image_id = str(attrs.get("Image") or "")
        if image_id not in images:
            images[image_id] = _image_config(project, image_id)
        facts = container_facts(attrs, images[image_id])
        result.setdefault(facts.service, []).append(facts)
    return result


def _image_config(project: ComposeProject, image_id: str) -> Mapping[str, Any] | None:
    """The image's Config; None when the image is gone (the container's own fields then)."""
    import docker.errors

    with asking_engine(project.label, f"docker image inspect {image_id[:19]}"):
        try:
            config: Mapping[str, Any] = project.client.images.get(image_id).attrs.get("Config")
        except docker.errors.NotFound:
            return None
    return config or {}


COMPOSE_CONFIG_TIMEOUT_S = 30


def compose_config(
    compose: Compose, timeout_s: float = COMPOSE_CONFIG_TIMEOUT_S
) -> dict[str, Declared]:
    """What the compose file declares for each service: `docker compose config --format json`
    of the inventory's file and project (interpolated, overrides merged, as `up` reads it)."""
    label = f"compose project {compose.project}"
    if compose.file is None:
        raise ValueError(f"{label}: no compose file in the inventory")
    env = dict(os.environ)
    if compose.docker_host:
        env["DOCKER_HOST"] = compose.docker_host
    if compose.dir:
        env["OPSBOOK_COMPOSE_DIR"] = str(compose.dir)
    command = ["docker", "compose", "-p", compose.project, "-f", str(compose.file)]
    override = compose.override_file
    if override is not None and override.exists():  # as opsbook's own compose commands read it
        command += ["-f", str(override)]
    try:
        done = subprocess.run(
            [*command, "config", "--format", "json"], env=env, capture_output=True, text=True,
            timeout=timeout_s, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise NotEvaluated(f"{label}: `docker compose config`: {reason}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise NotEvaluated(
            f"{label}: `docker compose config` exited {done.returncode}: {last}"
        ) from None
    try:
        services = json.loads(done.stdout).get("services") or {}
        return {str(name): declared(service) for name, service in services.items()}
    except ValueError as exc:  # not JSON, or a size compose should not have written
        raise NotEvaluated(f"{label}: `docker compose config`: {exc}") from None
