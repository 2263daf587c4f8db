"""Targets: one object per inventory entry, holding one connection for the whole run.

A target connects at most once per run and remembers the outcome, so that a target that cannot
be reached costs one timeout, not one per check. Every network call has a timeout taken from
the inventory's `thresholds.timeout_s`. Drivers (and the HTTP client) are imported on first
use: a run that never touches PostgreSQL never pays for importing psycopg.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import urlsplit

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

    def __post_init__(self) -> None:
        self._client = _Once(self._new_client)
        self._reach = _Once(self._probe)
        self._health = _Once(self._get_health)

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
            raise TargetUnreachable("http", self.name, self.where, reason) from None

    def reachable(self) -> None:
        """Raise TargetUnreachable (cached) when nothing accepts connections at the URL."""
        self._reach.get()

    def _new_client(self) -> Client:
        from opsbook.http import Client

        auth = None
        if self.spec.user and self.spec.password is not None:
            auth = (self.spec.user, self.spec.password.reveal())
        return Client(self.spec.url, self.timeout, auth)

    def get(self, path: str, params: dict[str, str] | None = None) -> Response:
        """GET a path (redirects are not followed); TargetUnreachable when there is no answer."""
        from opsbook.http import HttpError

        self.reachable()
        try:
            return self._client.get().get(path, params)
        except HttpError as exc:
            reason = f"no answer within {self.timeout:g}s" if exc.timed_out else str(exc)
            raise TargetUnreachable("http", self.name, self.where, reason) from None

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
            raise TargetUnreachable("postgres", self.name, self.where, _short(exc)) from None

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
            raise TargetUnreachable("redis", self.name, self.where, _short(exc)) from None
        return client

    def client(self) -> redis.Redis:
        """The run's one client, already PINGed; raises TargetUnreachable (cached)."""
        return self._client.get()


@dataclass
class HostTarget:
    """A machine of the inventory, observed through pytest-testinfra (local, ssh, docker...).

    Probes read its facts with testinfra's own modules (`testinfra.file(path).mode`,
    `testinfra.socket`, `testinfra.run`); checks name it by its inventory name.
    """

    name: str
    spec: Host
    _host: Any = field(default=None, init=False, repr=False)

    @property
    def label(self) -> str:
        return f"host {self.name}"

    @property
    def testinfra(self) -> Any:
        """The testinfra host (its backend connects on first use)."""
        if self._host is None:
            import testinfra

            self._host = testinfra.get_host(self.spec.spec)
        return self._host


@dataclass
class Targets:
    """Every target of an inventory, by kind and name."""

    http: dict[str, HttpTarget]
    postgres: dict[str, PostgresTarget]
    redis: dict[str, RedisTarget]

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

        HTTP targets are only connected to, not asked: a GET timed in a thread that competes
        with the drivers' imports for the interpreter would report the service slower than it is.
        Each driver is imported here, before its targets' connections are opened in the pool:
        two imports in two threads take turns at the interpreter and its import locks, and
        take 7% longer than one after the other.
        """
        from concurrent.futures import ThreadPoolExecutor
        from importlib import import_module

        wanted = set(wanted)
        http = [t.reachable for n, t in self.http.items() if ("http", n) in wanted]
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

    def close(self) -> None:
        for group in (self.http, self.postgres, self.redis):
            for target in group.values():
                target.close()

    def reset(self) -> None:
        """Forget what the run learned about every target (after a fix changed the stack)."""
        for group in (self.http, self.postgres, self.redis):
            for target in group.values():
                target.reset()
