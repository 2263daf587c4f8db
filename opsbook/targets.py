"""Targets: one object per inventory entry, holding one connection for the whole run.

A target connects at most once per run and remembers the outcome, so that a target that cannot
be reached costs one timeout, not one per check. Every network call has a timeout taken from
the inventory's `thresholds.timeout_s`. Drivers (and the HTTP client) are imported on first
use: a run that never touches PostgreSQL never pays for importing psycopg.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import math
import re
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import parse_qs, urlsplit

from opsbook.errors import TargetUnreachable
from opsbook.inventory import Host, HttpEndpoint, Inventory, Postgres, Redis

if TYPE_CHECKING:
    import psycopg
    import redis

    from opsbook.http import Client, Response

C = TypeVar("C")


def _short(exc: BaseException) -> str:
    """The useful part of a driver's error: its first line, without the driver's preamble."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # libpq repeats the host and port we already name: keep only what went wrong.
    return text.rsplit(" failed: ", 1)[-1].removeprefix("connection failed: ")


class _Once(Generic[C]):
    """Open a connection once; remember either the connection or why it failed."""

    def __init__(self, opener: Callable[[], C]) -> None:
        self._opener = opener
        self._lock = threading.Lock()
        self._value: C | None = None
        self._error: TargetUnreachable | None = None

    def get(self) -> C:
        with self._lock:
            if self._error is not None:
                raise self._error
            if self._value is None:
                try:
                    self._value = self._opener()
                except TargetUnreachable as exc:
                    self._error = exc
                    raise
            return self._value

    @property
    def opened(self) -> C | None:
        return self._value


class _Target:
    """What every target does with the connection it opened once (its `_Once` in `_OPENED`)."""

    _OPENED = ""

    def __post_init__(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        opened = getattr(self, self._OPENED).opened
        if opened is not None:
            opened.close()

    def reset(self) -> None:
        """Forget what this run learned, so that a check run again after a fix looks afresh."""
        self.close()
        self.__post_init__()


@dataclass
class HttpTarget(_Target):
    """An HTTP service from the inventory."""

    _OPENED = "_client"

    name: str
    spec: HttpEndpoint
    timeout: float
    _client: _Once[Client] = field(init=False, repr=False)
    _reach: _Once[bool] = field(init=False, repr=False)
    _health: _Once[Response] = field(init=False, repr=False)
    # Why the service stopped answering, once a request timed out: later requests of the run
    # fail at once, so a hung service costs one timeout per run, not one per check.
    _hung: str | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        self._client = _Once(self._new_client)
        self._reach = _Once(self._probe)
        self._health = _Once(self._get_health)
        self._hung = None

    @property
    def where(self) -> str:
        return self.spec.url

    def _probe(self) -> bool:
        parts = urlsplit(self.spec.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            with socket.create_connection((parts.hostname or "", port), timeout=self.timeout):
                return True
        except OSError as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
            silent = isinstance(exc, TimeoutError)
            raise TargetUnreachable("http", self.name, self.where, reason, silent=silent) from None

    def reachable(self) -> None:
        """Raise TargetUnreachable (cached) when nothing accepts connections at the URL."""
        self._reach.get()

    def _new_client(self) -> Client:
        from opsbook.http import Client

        auth = None
        if self.spec.user and self.spec.password is not None:
            auth = (self.spec.user, self.spec.password.reveal())
        return Client(self.spec.url, self.timeout, auth, self.spec.ca_file)

    def get(self, path: str, params: dict[str, str] | None = None) -> Response:
        """GET a path (redirects are not followed); TargetUnreachable when there is no answer."""
        from opsbook.http import HttpError

        self.reachable()
        if self._hung is not None:
            raise TargetUnreachable("http", self.name, self.where, self._hung, silent=True)
        try:
            return self._client.get().get(path, params)
        except HttpError as exc:
            if not exc.timed_out:
                raise TargetUnreachable("http", self.name, self.where, str(exc)) from None
            self._hung = f"no answer within {self.timeout:g}s"
            hung = TargetUnreachable("http", self.name, self.where, self._hung, silent=True)
            raise hung from None

    def answers(self) -> None:
        """Raise TargetUnreachable when the service accepts connections but does not answer
        (a hung process: the kernel still accepts for it). The run's preflight asks this of
        every HTTP target at once; the answer itself is not kept (its latency, taken while
        other targets are being reached, would not be the service's own)."""
        try:
            self.get(self.spec.health_path)
        except TargetUnreachable as exc:
            if exc.silent:
                raise
            # Any other trouble (a certificate a TLS check judges, a path that fails) is the
            # checks' to report: only silence makes the target unreachable for the whole run.

    def _get_health(self) -> Response:
        return self.get(self.spec.health_path)

    def health(self) -> Response:
        """The answer to GET health_path, fetched once per run and shared by the checks."""
        return self._health.get()


@dataclass
class PostgresTarget(_Target):
    """A PostgreSQL server, reached as the inventory's (monitoring) role."""

    _OPENED = "_connection"

    name: str
    spec: Postgres
    timeout: float
    _connection: _Once[psycopg.Connection[Any]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._connection = _Once(self._connect)

    @property
    def where(self) -> str:
        return f"{self.spec.host}:{self.spec.port}/{self.spec.database}"

    def _connect(self) -> psycopg.Connection[Any]:
        import psycopg

        statement_timeout_ms = int(self.timeout * 1000)
        try:
            return psycopg.connect(
                host=self.spec.host,
                port=self.spec.port,
                dbname=self.spec.database,
                user=self.spec.user,
                password=self.spec.password.reveal() if self.spec.password else None,
                sslmode=self.spec.sslmode,
                # libpq counts whole seconds and treats 1 as 2; never wait longer than asked.
                connect_timeout=max(2, round(self.timeout)),
                application_name="opsbook",
                options=f"-c statement_timeout={statement_timeout_ms}",
                autocommit=True,
            )
        except psycopg.Error as exc:
            # libpq says only this when the server accepted nothing or answered nothing in time.
            silent = "timeout expired" in str(exc)
            raise TargetUnreachable(
                "postgres", self.name, self.where, _short(exc), silent=silent
            ) from None

    def connection(self) -> psycopg.Connection[Any]:
        """The run's one connection; raises TargetUnreachable (cached) when it cannot open."""
        return self._connection.get()

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.connection().cursor() as cursor:
            cursor.execute(sql.encode(), params)
            return cursor.fetchall() if cursor.description else []


@dataclass
class RedisTarget(_Target):
    """A Redis server used as the message queue."""

    _OPENED = "_client"

    name: str
    spec: Redis
    timeout: float
    _client: _Once[redis.Redis] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._client = _Once(self._connect)

    @property
    def where(self) -> str:
        parts = urlsplit(self.spec.url)
        return f"{parts.hostname}:{parts.port or 6379}"

    def _connect(self) -> redis.Redis:
        import redis

        client = redis.Redis.from_url(
            self.spec.url,
            password=self.spec.password.reveal() if self.spec.password else None,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            decode_responses=True,
            retry_on_timeout=False,
        )
        try:
            client.ping()
        except redis.RedisError as exc:
            client.close()
            silent = isinstance(exc, redis.TimeoutError)
            raise TargetUnreachable(
                "redis", self.name, self.where, _short(exc), silent=silent
            ) from None
        return client

    def client(self) -> redis.Redis:
        """The run's one client, already PINGed; raises TargetUnreachable (cached)."""
        return self._client.get()


# Testinfra backends that run the `ssh` client: they get a connect timeout, batch mode and one
# multiplexed connection per host (below). Paramiko, docker and the others keep their own ways.
SSH_BACKENDS = ("ssh", "safe-ssh")
# How long an idle master connection outlives its last command (seconds); the run ends its
# masters itself on exit, this only bounds what a killed run leaves behind.
SSH_CONTROL_PERSIST_S = 60
_ssh_control_dir: Path | None = None
_ssh_control_lock = threading.Lock()


def _control_dir() -> Path:
    """This process's folder for ssh master sockets: one master per host (`%C` hashes user,
    host and port), shared by every target and runtime that reaches the host in this run."""
    global _ssh_control_dir
    with _ssh_control_lock:  # hosts are reached in parallel (the hosts fixture)
        if _ssh_control_dir is None:
            # A short path of its own under /tmp: a unix socket path has at most 107 bytes.
            _ssh_control_dir = Path(tempfile.mkdtemp(prefix="opsbook-ssh-", dir="/tmp"))
            atexit.register(_close_masters, _ssh_control_dir)
        return _ssh_control_dir


def _close_masters(directory: Path) -> None:
    """End this run's ssh master connections (`ssh -O exit`), then remove their folder."""
    for control in directory.iterdir():
        subprocess.run(
            ["ssh", "-o", f"ControlPath={control}", "-O", "exit", "opsbook-master"],
            capture_output=True, timeout=10, check=False,
        )  # fmt: skip
    shutil.rmtree(directory, ignore_errors=True)


def ssh_options(timeout_s: float, *, password: bool = False) -> dict[str, Any]:
    """testinfra's ssh backend options for one run (a spec's own `?timeout=` etc. win).

    ConnectTimeout (testinfra's `timeout`) bounds the TCP connect and the banner exchange;
    ServerAlive ends a connection whose host stopped answering; BatchMode keeps ssh from ever
    waiting for a password or a host key answer on a terminal (sshpass needs the prompt, so
    not with a password); ControlMaster/ControlPersist make every command of the run share
    one connection per host.
    """
    seconds = max(1, math.ceil(timeout_s))
    extra = f"-o ServerAliveInterval={seconds} -o ServerAliveCountMax=2"
    if not password:
        extra = "-o BatchMode=yes " + extra
    return {
        "timeout": seconds,
        # testinfra %-formats the ssh command line after adding this: %%C reaches ssh as %C.
        "controlpath": str(_control_dir() / "%%C"),
        "controlpersist": SSH_CONTROL_PERSIST_S,
        "ssh_extra_args": extra,
    }


def ssh_hostname(spec: str, timeout_s: float) -> str:
    """The name ssh connects to for a host spec, after its configuration (`Host web1` /
    `HostName 10.0.0.5`): `ssh -G`, which reads the configuration only; the spec's own name
    when ssh cannot say."""
    parts = urlsplit(spec)
    name = parts.hostname or ""
    command = ["ssh", "-G"]
    config = parse_qs(parts.query).get("ssh_config")
    if config:
        command += ["-F", config[0]]
    if parts.port:
        command += ["-p", str(parts.port)]
    if parts.username:
        command += ["-l", parts.username]
    try:
        done = subprocess.run(
            [*command, "--", name], capture_output=True, text=True, timeout=timeout_s,
            check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return name
    for line in done.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key == "hostname" and value:
            return value.strip()
    return name


def ssh_reason(stderr: str) -> str:
    """ssh's own reason, from its last line: `Connection refused`, `Could not resolve hostname
    web1: Name or service not known`, `Connection timed out during banner exchange`,
    `Permission denied (publickey)`, `Host key verification failed`."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if not lines:
        return "ssh exited 255 without a reason"
    # The host and user are already in the line that reports it: keep what went wrong.
    last = re.sub(r"^(ssh: connect to host \S+ port \d+|[^\s@]+@\S+): ", "", lines[-1])
    return last.removeprefix("ssh: ").rstrip(".")


def _testinfra_host(name: str, where: str, spec: str, timeout_s: float) -> Any:
    """The testinfra host for a spec; over ssh, with the run's options, and a lost connection
    (ssh's exit status 255) raised as TargetUnreachable naming the host, not a RuntimeError."""
    import testinfra
    import testinfra.backend
    import testinfra.host

    address, options = testinfra.backend.parse_hostspec(spec)
    connection = options.get("connection")
    if connection not in SSH_BACKENDS:
        return testinfra.get_host(spec)
    base = testinfra.backend.get_backend_class(connection)

    class Backend(base):  # type: ignore[misc,valid-type]  # testinfra has no type information
        def run_ssh(self, command: str) -> Any:
            try:
                return super().run_ssh(command)
            except RuntimeError as exc:
                stderr = getattr(exc.args[0], "stderr", "") if exc.args else ""
                raise TargetUnreachable("host", name, where, ssh_reason(stderr)) from None

    password = bool(urlsplit(spec).password)
    for key, value in ssh_options(timeout_s, password=password).items():
        options.setdefault(key, value)
    return testinfra.host.Host(Backend(address, **options))


@dataclass
class HostTarget:
    """A machine of the inventory, observed through pytest-testinfra (local, ssh, docker...).

    Probes read its facts with testinfra's own modules (`testinfra.file(path).mode`,
    `testinfra.socket`, `testinfra.run`); checks name it by its inventory name. It is reached
    once (`reachable()`): a host that cannot be reached costs one connect timeout and is
    TargetUnreachable for every check that needs it. Over ssh, every command shares one
    connection per host and run (see ssh_options).
    """

    name: str
    spec: Host
    timeout: float = 3.0  # the inventory's thresholds.timeout_s: ssh's connect timeout
    _host: Any = field(default=None, init=False, repr=False)
    _reach: _Once[bool] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._reach = _Once(self._probe)

    @property
    def label(self) -> str:
        return f"host {self.name}"

    @property
    def where(self) -> str:
        """The spec as a person reads it: no password, no options."""
        parts = urlsplit(self.spec.spec)
        user = f"{parts.username}@" if parts.username else ""
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{user}{parts.hostname or ''}{port}"

    @property
    def testinfra(self) -> Any:
        """The testinfra host (its backend connects on first use)."""
        if self._host is None:
            self._host = _testinfra_host(self.name, self.where, self.spec.spec, self.timeout)
        return self._host

    def _probe(self) -> bool:
        scheme = urlsplit(self.spec.spec).scheme
        if scheme == "local":
            return True
        if scheme in SSH_BACKENDS:
            self._name_answers()
        try:
            done = self.testinfra.run("true")
        except TargetUnreachable:
            raise
        except Exception as exc:  # testinfra's other backends raise their own errors
            raise TargetUnreachable("host", self.name, self.where, _short(exc)) from None
        if done.rc != 0:  # the backend connected, but the host would not run a command
            said = done.stderr.strip().splitlines()
            reason = said[0] if said else f"`true` exited {done.rc}"
            raise TargetUnreachable("host", self.name, self.where, reason)
        return True

    def reachable(self) -> None:
        """Raise TargetUnreachable (cached) when the host cannot be reached."""
        self._reach.get()

    def _name_answers(self) -> None:
        """Raise TargetUnreachable when the host's name gets no answer from the resolver
        within the timeout.

        ssh's ConnectTimeout bounds the connect, the banner and the key exchange, not the look-up
        of the name before them: a resolver that never answers would hold the run for the
        resolver's own timeouts and retries (glibc: 5 s, twice, for each address family). So
        the name ssh would connect to is looked up first, in a thread the run does not wait
        for past the timeout. A name that does not resolve is ssh's to report.
        """
        name = ssh_hostname(self.spec.spec, self.timeout)
        try:
            ipaddress.ip_address(name)
            return  # an address: nothing to look up
        except ValueError:
            pass

        def look_up() -> None:
            with contextlib.suppress(OSError, UnicodeError):
                socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)

        lookup = threading.Thread(target=look_up, name=f"opsbook-dns-{name}", daemon=True)
        lookup.start()
        lookup.join(self.timeout)
        if lookup.is_alive():
            reason = f"no answer from DNS for {name} within {self.timeout:g} s"
            raise TargetUnreachable("host", self.name, self.where, reason, silent=True)


@dataclass
class Targets:
    """Every target of an inventory, by kind and name."""

    http: dict[str, HttpTarget]
    postgres: dict[str, PostgresTarget]
    redis: dict[str, RedisTarget]
    # Other facts a run reads once (the compose project's engine snapshot): forgotten with
    # the targets after a fix, so that a re-check looks afresh.
    snapshots: list[Any] = field(default_factory=list)
    # Set by the preflight when no target of the deployment answered at all (the reason).
    cut_off: str | None = None

    @classmethod
    def from_inventory(cls, inventory: Inventory) -> Targets:
        timeout = inventory.thresholds.timeout_s
        return cls(
            http={n: HttpTarget(n, s, timeout) for n, s in inventory.http.items()},
            postgres={n: PostgresTarget(n, s, timeout) for n, s in inventory.postgres.items()},
            redis={n: RedisTarget(n, s, timeout) for n, s in inventory.redis.items()},
        )

    def preflight(self, wanted: Iterable[tuple[str, str]]) -> None:
        """Reach every wanted (kind, name) target at once, so that a run in which every
        target hangs costs one timeout, not one per target. Outcomes are cached for the checks.

        HTTP targets are asked for their health path (a hung process still has its connections
        accepted by the kernel), but that answer is not kept: a GET timed in a thread that
        competes with the drivers' imports would report the service slower than it is.
        Each driver is imported here, before its targets' connections are opened in the pool:
        two imports in two threads take turns at the interpreter and its import locks, and
        take 7% longer than one after the other.
        """
        from concurrent.futures import ThreadPoolExecutor
        from importlib import import_module

        wanted = set(wanted)
        http = [t.answers for n, t in self.http.items() if ("http", n) in wanted]
        postgres = [t.connection for n, t in self.postgres.items() if ("postgres", n) in wanted]
        redis = [t.client for n, t in self.redis.items() if ("redis", n) in wanted]
        groups: list[tuple[str | None, Sequence[Callable[[], object]]]]
        groups = [(None, http), ("psycopg", postgres), ("redis", redis)]
        count = sum(len(openers) for _, openers in groups)
        if count < 2:
            return  # nothing to overlap: the check itself will connect
        with ThreadPoolExecutor(max_workers=count) as pool:
            futures = []
            for driver, openers in groups:
                if openers and driver:
                    import_module(driver)
                futures += [pool.submit(opener) for opener in openers]
            for future in futures:
                if isinstance(future.exception(), TargetUnreachable | None):
                    continue
                future.result()
        silent = [f.exception() for f in futures]
        if all(isinstance(e, TargetUnreachable) and e.silent for e in silent):
            self.cut_off = (
                f"no answer, nor from any of the deployment's {count} targets: "
                "the runner may be cut off from it"
            )

    def not_cut_off(self, target: HttpTarget | PostgresTarget | RedisTarget) -> None:
        """Raise TargetUnreachable when no target of the deployment answered the preflight.

        A readiness check FAILs a service that does not answer, and its fix restarts it; but
        when nothing answers, a dead stack and a runner cut off by the network look alike, and
        a restart is the wrong guess: the run says it could not evaluate (exit 10) instead.
        """
        if self.cut_off is not None:
            kind = {HttpTarget: "http", PostgresTarget: "postgres"}.get(type(target), "redis")
            raise TargetUnreachable(kind, target.name, target.where, self.cut_off, silent=True)

    def close(self) -> None:
        for group in (self.http, self.postgres, self.redis):
            for target in group.values():
                target.close()

    def reset(self) -> None:
        """Forget what the run learned about every target (after a fix changed the stack)."""
        self.cut_off = None
        for group in (self.http, self.postgres, self.redis):
            for target in group.values():
                target.reset()
        for snapshot in self.snapshots:
            snapshot.forget()
