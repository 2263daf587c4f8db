"""The inventory: one YAML file describing a deployment, validated once at start.

The models are msgspec structs: validation is as strict as with the heavier libraries, and
defining and loading them costs about a millisecond, which matters for a run that must start
in well under a second.

The format is documented in docs/inventory.md. Values can be overridden from the environment
with `OPSBOOK__<SECTION>__<NAME>__<KEY>=value` (for example `OPSBOOK__POSTGRES__CHATDB__PORT=5433`
or `OPSBOOK__THRESHOLDS__QUEUE_BACKLOG=500`); the value is read as a YAML scalar.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from opsbook import yamltext
from opsbook.remediate.plan import risky_kinds
from opsbook.secrets import Redactor, Secret

ENV_PREFIX = "OPSBOOK__"
ENV_INVENTORY = "OPSBOOK_INVENTORY"
# A password or key file is small; anything larger is the wrong file.
MAX_SECRET_BYTES = 64 * 1024
MAX_INVENTORY_BYTES = 1024 * 1024
# Sections keyed by the operator's own names: an override may change an entry, never add one
# (OPSBOOK__POSTGRES__CHATBD__PORT, a typo, would otherwise create a target "chatbd").
NAMED_SECTIONS = ("http", "postgres", "redis", "hosts", "egress", "services", "credentials")


# The override file `docker compose` reads beside compose.yaml when no -f is given.
OVERRIDE_NAME = "compose.override.yaml"


class InventoryError(Exception):
    """A bad inventory: the message is one line that names the file and the key."""


def _resolve_secret(value: object) -> Secret:
    if isinstance(value, Secret):
        return value
    if not isinstance(value, Mapping) or len(value) != 1 or not ({"env", "file"} & set(value)):
        raise ValueError(
            "a secret is given by reference, {env: VARIABLE} or {file: PATH}, never inline"
        )
    if "env" in value:
        name = str(value["env"])
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set")
        return Secret(os.environ[name], f"env {name}")
    path = Path(str(value["file"])).expanduser()
    try:
        text = yamltext.read_text_file(path, MAX_SECRET_BYTES)
    except yamltext.NotText as exc:
        raise ValueError(f"cannot read secret file {path}: {exc}") from None
    return Secret(text.rstrip("\n"), f"file {path}")


def _unread_secret(value: object) -> Secret:
    """A secret checked for its form only (`opsbook inventory check`, `opsbook list`)."""
    reference = _check_reference(value).reference
    source = f"env {reference['env']}" if "env" in reference else f"file {reference['file']}"
    return Secret.unread(source)


def _check_reference(value: object) -> SecretReference:
    if isinstance(value, SecretReference):
        return value
    if not isinstance(value, Mapping) or len(value) != 1 or not ({"env", "file"} & set(value)):
        raise ValueError(
            "a secret is given by reference, {env: VARIABLE} or {file: PATH}, never inline"
        )
    return SecretReference(dict(value))


class SecretReference:
    """A secret that is read only when it is used (remediation credentials)."""

    def __init__(self, reference: dict[str, object]) -> None:
        self.reference = reference

    def resolve(self) -> Secret:
        return _resolve_secret(self.reference)

    def __repr__(self) -> str:
        return f"SecretReference({self.reference})"


Port = Annotated[int, Meta(ge=1, le=65535)]
Seconds = Annotated[float, Meta(gt=0, le=3600)]
Percent = Annotated[float, Meta(gt=0, le=100)]
Count = Annotated[int, Meta(ge=0)]


class _Model(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """A section of the inventory: unknown keys are refused, values cannot be changed.

    Subclasses say `frozen=True` again for the type checkers' sake."""


class Admin(_Model, frozen=True):
    """Credentials for remediation only: read when a fix is applied, never for checking."""

    user: str
    password: SecretReference | None = None


class HttpEndpoint(_Model, frozen=True):
    """An HTTP service: the backend, the frontend, Prometheus or Grafana."""

    kind: Literal["backend", "frontend", "prometheus", "grafana", "other"]
    url: str
    service: str | None = None  # the runtime's name for it (compose service, sandbox component)
    health_path: str = "/health"
    user: str | None = None
    password: Secret | None = None
    # kind prometheus: alerts that fire here by design; ALERT-004 lists them but does not fail
    expected_alerts: tuple[str, ...] = ()
    # kind frontend: a path of the backend's API this entry proxies; HEALTH-004 asks it through
    # the entry and from the backend, and expects the same answer (a read: GET, no side effect)
    api_path: str | None = None
    # https: the PEM file of the CA that signs the entry's certificate (a private CA, or a
    # self-signed certificate, which is its own), trusted for this entry instead of the system's
    ca_file: Path | None = None

    @property
    def verify(self) -> str | bool:
        """What to verify the entry's certificate with (requests' `verify=`)."""
        return str(self.ca_file) if self.ca_file is not None else True

    def __post_init__(self) -> None:
        if self.expected_alerts and self.kind != "prometheus":
            raise ValueError(f"expected_alerts: only for kind prometheus, not {self.kind}")
        if self.api_path is not None and (
            self.kind != "frontend" or not self.api_path.startswith("/")
        ):
            raise ValueError("api_path: a path starting with /, only for kind frontend")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url: not an http(s) URL: {self.url!r}")
        if self.ca_file is not None and parts.scheme != "https":
            raise ValueError("ca_file: only for an https url")
        if parts.password:
            raise ValueError("url: the URL holds a password; give it as password: {env: NAME}")
        msgspec.structs.force_setattr(self, "url", self.url.rstrip("/"))


class Postgres(_Model, frozen=True):
    """A PostgreSQL server and the database the checks read, as the monitoring role."""

    host: str = "127.0.0.1"
    port: Port = 5432
    database: str = "chatdb"
    user: str = "opsbook_monitor"
    password: Secret | None = None
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    service: str | None = None
    admin: Admin | None = None


class Queues(_Model, frozen=True):
    """The Redis lists that make up the message queue."""

    pending: str = "message_queue"
    dead_letter: str = "dead_letter_queue"
    processed: str = "processed_messages"
    # The consumer's in-flight list (the reference worker's processing list); each further
    # consumer keeps its own, named IN_FLIGHT:NAME. QUEUE-008 reads them all.
    in_flight: str = "message_queue:processing"


class Redis(_Model, frozen=True):
    """A Redis server used as the message queue."""

    url: str = "redis://127.0.0.1:6379/0"
    password: Secret | None = None
    queues: Queues = msgspec.field(default_factory=Queues)
    service: str | None = None
    admin: Admin | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError(f"url: not a redis:// URL: {self.url!r}")
        if parts.password:
            raise ValueError("url: the URL holds a password; give it as password: {env: NAME}")


class Credential(_Model, frozen=True):
    """A secret the application uses, which `opsbook secrets rotate` replaces: a PostgreSQL
    role's or a Redis user's password, or an API key, in the file the application reads."""

    kind: Literal["postgres", "redis", "api_key"]
    file: Path  # the secret file the application reads; the rotation writes it
    target: str | None = None  # postgres, redis: the entry of postgres:/redis: that holds it
    user: str | None = None  # postgres: the role (required); redis: the ACL user (default)
    # The services restarted to pick it up (default: those that depend on the target's
    # service, monitoring aside); an api_key names them.
    consumers: tuple[str, ...] | None = None
    # The server's own start sets the password from this file (the sandbox's and the compose
    # stack's Redis write their config from it): Redis's CONFIG REWRITE is then not needed.
    server_reads_file: bool = False

    def __post_init__(self) -> None:
        if self.kind == "api_key":
            if self.target is not None or self.user is not None:
                raise ValueError("target: an api_key has no target or user, only consumers")
            if not self.consumers:
                raise ValueError("consumers: an api_key names the services that read it")
            return
        if self.target is None:
            raise ValueError(f"target: required for kind {self.kind} (an entry of {self.kind}:)")
        if self.kind == "postgres" and self.user is None:
            raise ValueError("user: required for kind postgres (the application's role)")


class Host(_Model, frozen=True):
    """A machine for host-level checks, reached through a testinfra host spec."""

    spec: str = "local://"
    # The runbook's `df -h /` and `/var`; RES-001 adds where the stack writes (backups, logs).
    filesystems: tuple[str, ...] = ("/", "/var")
    logs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not re.match(r"^[a-z+]+://", self.spec):
            raise ValueError(
                f"spec: not a testinfra host spec (local://, ssh://, docker://...): {self.spec!r}"
            )


RUNTIMES = ("sandbox", "compose", "systemd", "command")
ROLES = ("proxy", "frontend", "api", "consumer", "database", "queue", "monitoring", "other")


class ServiceCommands(_Model, frozen=True):
    """The `command` runtime: how to drive a service that no other runtime knows."""

    start: str
    stop: str
    status: str  # exits 0 when the service runs
    restart: str | None = None  # default: stop, then start
    reload: str | None = None
    # The frontend's maintenance page on and off (`opsbook maintenance`); both or neither.
    maintenance_on: str | None = None
    maintenance_off: str | None = None

    def __post_init__(self) -> None:
        if (self.maintenance_on is None) != (self.maintenance_off is None):
            raise ValueError("maintenance_on and maintenance_off: give both or neither")


# compose's sizes (docker's units.RAMInBytes): 1024s, "2G", "512m", "1.5GiB", 268435456 bytes.
_COMPOSE_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgtp]?)i?b?", re.IGNORECASE)


def compose_size_bytes(value: str | int) -> int:
    """A compose memory size in bytes; ValueError naming the value when it is none."""
    match = _COMPOSE_SIZE.fullmatch(str(value).strip())
    if match is None or isinstance(value, bool):
        raise ValueError(f"not a size (2G, 512M, or bytes): {value!r}")
    return int(float(match[1]) * 1024 ** " kmgtp".index((match[2] or " ").lower()))


class Limits(_Model, frozen=True):
    """The CPU and memory a service's containers are expected to run with (compose's
    deploy.resources: limits cpus and memory, reservations memory). COMPOSE-008 compares what
    the engine applies; a value left out is not compared."""

    cpus: Annotated[float, Meta(gt=0)] | None = None
    memory: str | int | None = None  # compose's notation: 2G, 512M, or bytes
    memory_reservation: str | int | None = None

    def __post_init__(self) -> None:
        if self.cpus is None and self.memory is None and self.memory_reservation is None:
            raise ValueError("give cpus, memory or memory_reservation")
        for key in ("memory", "memory_reservation"):
            value = getattr(self, key)
            try:
                amount = None if value is None else compose_size_bytes(value)
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None
            if amount is not None and amount <= 0:
                raise ValueError(f"{key}: must be more than 0: {value!r}")
        reserved, most = self.memory_reservation_bytes, self.memory_bytes
        if reserved is not None and most is not None and reserved > most:
            raise ValueError(
                f"memory_reservation: {self.memory_reservation} is more than memory {self.memory}"
            )

    @property
    def memory_bytes(self) -> int | None:
        return None if self.memory is None else compose_size_bytes(self.memory)

    @property
    def memory_reservation_bytes(self) -> int | None:
        value = self.memory_reservation
        return None if value is None else compose_size_bytes(value)


class Service(_Model, frozen=True):
    """A service of the deployment: how it runs, where, what it serves and what it needs.

    Direction: a service is blocked by what it `depends_on`; when a dependency fails, the
    dependent's failures are reported as blocked by it and only the dependency is fixed.
    """

    runtime: Literal["sandbox", "compose", "systemd", "command"] | None = None
    host: str | None = None  # an entry of `hosts:` where systemd/command run (default: local)
    targets: tuple[str, ...] = ()  # entries of http/postgres/redis this service serves
    depends_on: tuple[str, ...] = ()
    role: Literal[
        "proxy", "frontend", "api", "consumer", "database", "queue", "monitoring", "other"
    ] = "other"
    unit: str | None = None  # systemd: the unit (default: <name>.service)
    commands: ServiceCommands | None = None  # command: required
    sudo: bool = False  # systemd/command: run through sudo on the host
    # systemd: the file on the host whose existence has the unit's nginx serve its maintenance
    # page (`opsbook maintenance on` creates it, then reloads the unit; docs/inventory.md).
    maintenance_flag: str | None = None
    limits: Limits | None = None  # compose: what its containers must run with (COMPOSE-008)

    def __post_init__(self) -> None:
        if self.runtime == "command" and self.commands is None:
            raise ValueError("commands: required with runtime: command")
        if self.commands is not None and self.runtime != "command":
            raise ValueError("commands: only with runtime: command")
        if self.unit is not None and self.runtime != "systemd":
            raise ValueError("unit: only with runtime: systemd")
        if self.maintenance_flag is not None and self.runtime != "systemd":
            raise ValueError("maintenance_flag: only with runtime: systemd")
        if self.maintenance_flag is not None and not self.maintenance_flag.startswith("/"):
            raise ValueError(f"maintenance_flag: an absolute path: {self.maintenance_flag!r}")


class Compose(_Model, frozen=True):
    """The compose project, when the stack runs on a container engine."""

    project: str
    file: Path | None = None
    docker_host: str | None = None
    dir: Path | None = None  # where the stack's secret files are (OPSBOOK_COMPOSE_DIR)
    # The override file every compose command of opsbook reads after `file` when it exists, and
    # COMPOSE-008's fix writes the expected limits into (default: compose.override.yaml beside
    # `file`, the name `docker compose` itself reads).
    override: Path | None = None

    @property
    def override_file(self) -> Path | None:
        if self.override is not None:
            return self.override
        return self.file.with_name(OVERRIDE_NAME) if self.file is not None else None


class Egress(_Model, frozen=True):
    """A destination outside the stack that must stay reachable (opt-in check NET-001)."""

    url: str

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https", "tcp") or not parts.hostname:
            raise ValueError(f"url: not an http(s):// or tcp://host:port URL: {self.url!r}")
        if parts.scheme == "tcp" and not parts.port:
            raise ValueError(f"url: a tcp:// URL needs a port: {self.url!r}")


class Sandbox(_Model, frozen=True):
    """Set by `python -m opsbook sandbox up`: the sandbox's state directory."""

    dir: Path


class Budget(_Model, frozen=True):
    """At most `count` applications of a kind of fix per target within `per_s` seconds."""

    count: Count
    per_s: Annotated[float, Meta(gt=0, le=30 * 86400)]


# The one list of kinds is opsbook.remediate.plan.StepKind.
RISKY_KINDS = tuple(kind.value for kind in risky_kinds())


DEFAULT_BUDGETS = {
    "restart": Budget(count=2, per_s=3600),
    "recreate": Budget(count=1, per_s=3600),
    "end-sessions": Budget(count=3, per_s=3600),
    "delete-files": Budget(count=1, per_s=86400),
    "trim": Budget(count=2, per_s=3600),
    "alter-system": Budget(count=1, per_s=86400),
    "restore": Budget(count=1, per_s=86400),
    "rollback": Budget(count=2, per_s=3600),
}


def _check_gateway(address: str) -> None:
    """Refuse a Pushgateway address that is not an http(s) URL, naming it without a password
    written in it (a gateway behind basic auth: opsbook.pushgateway)."""
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"pushgateway: not an http(s) URL: {Redactor()(repr(address))}")


class AuditTrail(_Model, frozen=True):
    """The audit log's key and where its head is exported, out of reach of the reports' writer
    (docs/remediation.md#the-audit-log)."""

    key_file: Path | None = None  # default: generated in the state directory on first use
    textfile_dir: Path | None = None  # node-exporter's textfile collector directory
    pushgateway: str | None = None  # a Pushgateway's URL

    def __post_init__(self) -> None:
        if self.pushgateway is not None:
            _check_gateway(self.pushgateway)


class RunMetrics(_Model, frozen=True):
    """Where every run against this deployment reports its metrics (opsbook/plugin/metrics.py),
    unless --metrics-textfile or --pushgateway says otherwise: what the dead-man alert watches."""

    textfile: Path | None = None  # a file in node-exporter's textfile collector directory
    pushgateway: str | None = None  # a Pushgateway's URL

    def __post_init__(self) -> None:
        if self.pushgateway is not None:
            _check_gateway(self.pushgateway)


class Remediation(_Model, frozen=True):
    """What automatic fixes may do. Risky kinds need to be allowed here or with --allow."""

    allow: tuple[str, ...] = ()
    budgets: dict[str, Budget] = msgspec.field(default_factory=lambda: dict(DEFAULT_BUDGETS))
    verify_timeout_s: Seconds = 30
    retention_days: Annotated[int, Meta(ge=1)] = 30
    audit_trail: AuditTrail = msgspec.field(default_factory=AuditTrail)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.allow) - set(RISKY_KINDS))
        if unknown:
            raise ValueError(
                f"allow: unknown kind(s) {unknown}; risky kinds are {list(RISKY_KINDS)}"
            )


class Audit(_Model, frozen=True):
    """What the security and access audit expects (`pytest -m audit`)."""

    secret_files: tuple[str, ...] = ()  # globs on every host: .env, *.key, *.pem files
    secret_file_owner: str = "root"  # noqa: S105 (an account name, not a password)
    login_users: tuple[str, ...] = ("root",)  # the only accounts allowed a login shell
    service_accounts: tuple[str, ...] = ()  # system users expected besides the OS's own
    public_ports: tuple[int, ...] = ()  # the only ports that may listen on all interfaces
    app_roles: tuple[str, ...] = ("chat_app",)  # PostgreSQL roles of the application
    redis_app_users: tuple[str, ...] = ("chat_app",)
    require_ssl: bool = False  # PostgreSQL traffic leaves the host
    log_window_s: Annotated[float, Meta(gt=0)] = 86400  # incident log audit looks back this far
    logs: tuple[str, ...] = ()  # logs the log audit reads on every host, besides hosts' logs


class Tuning(_Model, frozen=True):
    """The performance-tuning runbook's expectations of PostgreSQL (unset: not checked)."""

    shared_buffers: str | None = None  # as SHOW prints it, e.g. "256MB"
    effective_cache_size: str | None = None
    maintenance_work_mem: str | None = None
    dead_tuple_percent: Percent = 20
    stats_max_age_s: Annotated[float, Meta(gt=0)] = 7 * 86400


class Backup(_Model, frozen=True):
    """Where opsbook's backups go, what they hold, and how old the newest may be."""

    dir: Path
    max_age_s: Annotated[float, Meta(gt=0)] = 86400
    data_paths: tuple[Path, ...] = ()  # application data to tar alongside the dumps
    retention_days: Annotated[int, Meta(ge=1)] = 30


class DeployCommands(_Model, frozen=True):
    """`opsbook deploy` where no compose project is: the commands that deploy a release and
    roll it back (`{tag}` is the release's tag), run with `sh -c` on `deploy.host`."""

    deploy: str
    rollback: str


class Deploy(_Model, frozen=True):
    """How the stack is deployed, for the pre- and post-deploy gates, `opsbook deploy` and
    rollback (docs/deploy-and-backup.md)."""

    repo: Path | None = None  # the release's git working tree (must be clean)
    compose_file: Path | None = None
    releases_dir: Path | None = None  # the sandbox's releases (current -> the deployed one)
    min_free_mb: Count = 1024
    readiness_deadline_s: Annotated[float, Meta(gt=0, le=3600)] = 120
    # compose: the services a deploy replaces (default: the api and consumer roles of services:)
    services: tuple[str, ...] = ()
    # The runbook's own pre-deploy steps (tests, lint, build): name -> shell command, run in
    # `repo` (else the working folder); their output is kept in the deploy's report folder.
    gate_commands: dict[str, str] = {}
    gate_timeout_s: Annotated[float, Meta(gt=0, le=86400)] = 1800
    registry: str | None = None  # compose: pull TAG's images from here (host[:port][/path])
    commands: DeployCommands | None = None  # systemd, command: how a release is deployed
    host: str | None = None  # an entry of hosts: where `commands` run (default: this machine)

    def __post_init__(self) -> None:
        if self.registry is not None and (
            "://" in self.registry or not re.fullmatch(r"[A-Za-z0-9.:/_-]+", self.registry)
        ):
            raise ValueError(f"registry: host[:port][/path], no scheme: {self.registry!r}")
        bad = [name for name in self.gate_commands if not re.fullmatch(r"[A-Za-z0-9_-]+", name)]
        if bad:
            raise ValueError(f"gate_commands: names are letters, digits, _ and -: {bad[0]!r}")


class Thresholds(_Model, frozen=True):
    """Limits from the runbooks; every check reads its limit here."""

    timeout_s: Seconds = 3.0
    response_time_s: Seconds = 2.0
    disk_used_percent: Percent = 80
    memory_used_percent: Percent = 90
    redis_memory_percent: Percent = 90
    queue_backlog: Count = 1000
    dead_letter_max: Count = 10
    oldest_message_age_s: Seconds = 300
    in_flight_age_s: Seconds = 300  # QUEUE-008: a message held in flight longer is stuck
    http_5xx_rate: Annotated[float, Meta(ge=0)] = 0.1
    pg_connections_percent: Percent = 80
    idle_in_transaction_s: Seconds = 300
    idle_session_s: Seconds = 600  # DB-002's fix ends sessions idle longer than this
    log_window_s: Seconds = 300
    container_restarts_max: Count = 3
    container_cpu_percent: Percent = 90
    processed_window_s: Seconds = 3600
    drain_sample_s: Annotated[float, Meta(gt=0, le=60)] = 0.5  # a healthy worker takes a message
    # OBS-004 fails above either: http_5xx_rate (per second, the runbook's) or this share of
    # the application's responses (which catches a small deployment that fails every request)
    http_5xx_ratio: Annotated[float, Meta(ge=0, le=1)] = 0.05
    traffic_window_s: Seconds = 300  # OBS-004: the real traffic looked at (the runbook's 5 min)
    cpu_pressure_percent: Percent = 80  # RES-003: time runnable tasks waited for a CPU


class Inventory(_Model, frozen=True):
    """One deployment of the AI chat system."""

    name: str
    http: dict[str, HttpEndpoint] = {}
    postgres: dict[str, Postgres] = {}
    redis: dict[str, Redis] = {}
    hosts: dict[str, Host] = {}
    egress: dict[str, Egress] = {}
    compose: Compose | None = None
    sandbox: Sandbox | None = None
    thresholds: Thresholds = msgspec.field(default_factory=Thresholds)
    remediation: Remediation = msgspec.field(default_factory=Remediation)
    audit: Audit = msgspec.field(default_factory=Audit)
    tuning: Tuning = msgspec.field(default_factory=Tuning)
    backup: Backup | None = None
    deploy: Deploy = msgspec.field(default_factory=Deploy)
    metrics: RunMetrics = msgspec.field(default_factory=RunMetrics)
    services: dict[str, Service] = {}
    credentials: dict[str, Credential] = {}
    # The deployment's remediation lock, budgets and audit log (default: under opsbook's home).
    state_dir: Path | None = None

    def __post_init__(self) -> None:
        problem = _services_problem(self)
        if problem:
            raise ValueError(f"services: {problem}")
        if self.deploy.host is not None and self.deploy.host not in self.hosts:
            raise ValueError(f"deploy: host: no such entry in hosts: {self.deploy.host}")
        unknown = [s for s in self.deploy.services if self.services and s not in self.services]
        if unknown:
            raise ValueError(f"deploy: services: no such service: {', '.join(unknown)}")
        for name, credential in self.credentials.items():
            section: Mapping[str, object] = getattr(self, credential.kind, {})
            if credential.target is not None and credential.target not in section:
                raise ValueError(
                    f"credentials: {name}.target: no such entry in {credential.kind}: "
                    f"{credential.target}"
                )
            unknown = [c for c in credential.consumers or () if c not in self.services]
            if unknown and self.services:
                raise ValueError(
                    f"credentials: {name}.consumers: no such service: {', '.join(unknown)}"
                )

    def runtime_of(self, service: str) -> str | None:
        """The runtime that drives `service`: its own, else the deployment's (sandbox or
        compose), else None (nothing here can restart it)."""
        declared = self.services.get(service)
        if declared is not None and declared.runtime is not None:
            return declared.runtime
        if self.sandbox is not None:
            return "sandbox"
        if self.compose is not None:
            return "compose"
        return None

    def service_of(self, target: str) -> str:
        """The service that serves an entry of http/postgres/redis (by name).

        The service whose `targets` list it; else the entry's own `service:` key; else a
        service of the same name; else the target's name (the runtime's name for it)."""
        for name, service in self.services.items():
            if target in service.targets:
                return name
        section: Mapping[str, object] = {**self.http, **self.postgres, **self.redis}
        declared = getattr(section.get(target), "service", None)
        return declared if isinstance(declared, str) else target

    def dependencies(self, service: str) -> tuple[str, ...]:
        """Everything `service` depends on, directly or not, nearest first."""
        seen: dict[str, None] = {}
        queue = list(self.services[service].depends_on) if service in self.services else []
        while queue:
            name = queue.pop(0)
            if name not in seen:
                seen[name] = None
                queue.extend(self.services[name].depends_on)
        return tuple(seen)

    def with_role(self, role: str) -> tuple[str, ...]:
        """The services of a role, e.g. the queue's consumers."""
        return tuple(name for name, s in self.services.items() if s.role == role)

    def endpoints(self, *kinds: str) -> dict[str, HttpEndpoint]:
        return {name: ep for name, ep in self.http.items() if ep.kind in kinds}

    def secrets(self) -> Iterator[Secret]:
        """Every secret the inventory resolved, so that the redactor can mask them."""
        for section in (self.http, self.postgres, self.redis):
            for target in section.values():
                if target.password is not None:
                    yield target.password


def _services_problem(inventory: Inventory) -> str | None:
    """What is wrong with the services graph, in one line (None when it is sound)."""
    services = inventory.services
    entries = {**inventory.http, **inventory.postgres, **inventory.redis}
    for name, service in services.items():
        unknown = [d for d in service.depends_on if d not in services]
        if unknown:
            return f"{name}.depends_on: no such service: {', '.join(unknown)}"
        if name in service.depends_on:
            return f"{name}.depends_on: a service cannot depend on itself"
        missing = [t for t in service.targets if t not in entries]
        if missing:
            return f"{name}.targets: no such http, postgres or redis entry: {', '.join(missing)}"
        if service.host is not None and service.host not in inventory.hosts:
            return f"{name}.host: no such entry in hosts: {service.host}"
    served: dict[str, str] = {}
    for name, service in services.items():
        for target in service.targets:
            if target in served:
                return f"{name}.targets: {target} is already served by {served[target]}"
            served[target] = name
    # A cycle would make "blocked by" circular: every service would wait for another.
    state: dict[str, int] = {}

    def cycle_from(name: str, path: tuple[str, ...]) -> tuple[str, ...] | None:
        if state.get(name) == 1:
            return (*path, name)
        if state.get(name) == 2:
            return None
        state[name] = 1
        for dependency in services[name].depends_on:
            found = cycle_from(dependency, (*path, name))
            if found:
                return found
        state[name] = 2
        return None

    for name in services:
        found = cycle_from(name, ())
        if found:
            start = found.index(found[-1])
            return f"dependency cycle: {' -> '.join(found[start:])}"
    return None


def _apply_environment(raw: dict[str, Any], environ: Mapping[str, str]) -> list[str]:
    applied = []
    for variable, value in sorted(environ.items()):
        if not variable.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in variable[len(ENV_PREFIX) :].split("__")]
        if not all(path):
            raise InventoryError(f"{variable}: empty key in the variable name")
        if path[0] in NAMED_SECTIONS and len(path) > 2:
            entries = raw.get(path[0])
            if not isinstance(entries, dict) or path[1] not in entries:
                known = ", ".join(sorted(entries)) if isinstance(entries, dict) else "none"
                raise InventoryError(
                    f"{variable}: no {path[0]} entry named {path[1]} (entries: {known}); "
                    "an override changes an entry, it does not add one"
                )
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise InventoryError(f"{variable}: {part} is not a section")
            node = child
        try:
            node[path[-1]] = yamltext.safe_load(value) if value else value
        except yamltext.YAMLError as exc:
            raise InventoryError(
                f"{variable}: not a valid YAML value: {yamltext.problem(exc)}"
            ) from None
        applied.append(variable)
    return applied


T = TypeVar("T")
_AT = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_FIELD = re.compile(r"^Object (?P<what>contains unknown|missing required) field `(?P<name>[^`]+)`$")


def _decode(kind: type, value: object) -> object:
    """msgspec's hook for the types it does not know: secrets by reference, paths."""
    if kind is Secret:
        return _resolve_secret(value)
    return _decode_unread(kind, value)


def _decode_unread(kind: type, value: object) -> object:
    """The same hook, when secrets are not to be read: their references are checked only."""
    if kind is Secret:
        return _unread_secret(value)
    if kind is SecretReference:
        return _check_reference(value)
    if kind is Path and isinstance(value, str):
        return Path(value)
    raise NotImplementedError(kind)


def _walk(raw: Any, path: str) -> Any:
    for part in re.findall(r"\.(\w+)|\[(\d+)\]", path):
        raw = raw[part[0]] if part[0] else raw[int(part[1])]
    return raw


def _located(error: msgspec.ValidationError) -> tuple[str, str]:
    match = _AT.match(str(error))
    assert match is not None
    return match["message"], match["path"] or ""


def _name_keys(raw: Any, kind: type, path: str, hook: Callable[[type, object], object]) -> str:
    """msgspec writes a mapping's key as `[...]`: find which key it was, by trying each alone."""
    import copy

    while "[...]" in path:
        prefix, _, rest = path.partition("[...]")
        container = _walk(raw, prefix)
        for key in container:
            trial = copy.deepcopy(raw)
            parent = _walk(trial, prefix.rsplit(".", 1)[0]) if "." in prefix else trial
            parent[prefix.rsplit(".", 1)[-1]] = {key: container[key]}
            try:
                msgspec.convert(trial, kind, dec_hook=hook)
            except msgspec.ValidationError as exc:
                if _located(exc)[1].startswith(prefix + "[...]"):
                    path = f"{prefix}.{key}{rest}"
                    break
        else:
            break
    return path


def convert(raw: Any, kind: type[T], what: str, *, resolve_secrets: bool = True) -> T:
    """Validate raw data into `kind`; an InventoryError naming the key when it is wrong.

    With `resolve_secrets=False`, no secret is read: a reference's form is checked, and the
    value is an unread `Secret` (everything else is validated as always)."""
    hook = _decode if resolve_secrets else _decode_unread
    try:
        return msgspec.convert(raw, kind, dec_hook=hook)
    except msgspec.ValidationError as exc:
        message, path = _located(exc)
        path = _name_keys(raw, kind, path, hook)
        field = _FIELD.match(message)
        if field:
            path = f"{path}.{field['name']}"
            message = "unknown key" if field["what"] == "contains unknown" else "required"
        named = re.match(r"^(\w+): (.*)$", message, re.S)  # from a struct's own check
        if named:
            path, message = f"{path}.{named[1]}", named[2]
        key = path.lstrip(".") or "(top level)"
        raise InventoryError(f"{what}: {key}: {message}") from None


def read_inventory(path: Path, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Read an inventory file and apply the environment's overrides, not yet validated."""
    environ = os.environ if environ is None else environ
    try:
        text = yamltext.read_text_file(path, MAX_INVENTORY_BYTES)
    except yamltext.NotText as exc:
        raise InventoryError(f"inventory {path}: cannot read: {exc}") from None
    try:
        raw = yamltext.safe_load(text)
    except yamltext.YAMLError as exc:
        raise InventoryError(f"inventory {path}: not valid YAML: {yamltext.problem(exc)}") from None
    if not isinstance(raw, dict):
        raise InventoryError(f"inventory {path}: expected a mapping at the top level")
    try:
        _apply_environment(raw, environ)
    except InventoryError as exc:
        raise InventoryError(f"inventory {path}: {exc}") from None
    return raw


def load_inventory(
    path: Path, environ: Mapping[str, str] | None = None, *, resolve_secrets: bool = True
) -> Inventory:
    """Read, override from the environment, and validate an inventory file.

    `resolve_secrets=False` reads no secret (a CI job linting a production inventory, `opsbook
    list`): references are checked for their form, files and variables need not exist."""
    raw = read_inventory(path, environ)
    return convert(raw, Inventory, f"inventory {path}", resolve_secrets=resolve_secrets)
