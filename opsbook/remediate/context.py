"""What a remediation is given: the inventory, the failing target, and admin access on demand."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from opsbook.inventory import (
    Admin,
    Compose,
    Host,
    HttpEndpoint,
    Inventory,
    Postgres,
    Redis,
    Thresholds,
)
from opsbook.remediate.plan import Gate, name_of
from opsbook.remediate.runtime import Runtime, runtime_for

if TYPE_CHECKING:
    import psycopg
    import redis

    from opsbook.remediate.plan import Plan

SpecT = TypeVar("SpecT")


class NoRuntime(Exception):
    """The inventory names no runtime, so services cannot be restarted from here."""


class WrongTargetKind(TypeError):
    """A fix asked for a kind of target the failing check is not about (a bug in the fix, or
    the fix is linked to the wrong check)."""


@dataclass
class Context:
    """One failing check on one target, as a remediation sees it."""

    inventory: Inventory
    check_id: str
    target_kind: str  # http, postgres, redis, host, compose
    target: str
    run_id: str = ""
    gate: Gate = field(default=lambda step: None, repr=False)
    _runtime: Runtime | None = field(default=None, repr=False)
    # The fix being run (the runner sets it): its plan is named after it.
    fix: Callable[..., Plan] | None = field(default=None, repr=False)

    @property
    def fix_name(self) -> str:
        """`opsbook.remediation.services.restart_service`; empty when a fix is called directly."""
        return name_of(self.fix) if self.fix is not None else ""

    @property
    def thresholds(self) -> Thresholds:
        return self.inventory.thresholds

    def _spec(self, kind: str, section: dict[str, SpecT]) -> SpecT:
        if self.target_kind != kind:
            raise WrongTargetKind(
                f"{self.fix_name or 'the fix'} wants a {kind} target, but {self.check_id} "
                f"failed on {self.target_kind or 'a'} target {self.target!r}"
            )
        try:
            return section[self.target]
        except KeyError:
            raise WrongTargetKind(
                f"the inventory has no {kind} target {self.target!r} (its {kind} targets: "
                f"{', '.join(sorted(section)) or 'none'})"
            ) from None

    def postgres_spec(self) -> Postgres:
        """The inventory entry of the failing PostgreSQL target (WrongTargetKind otherwise)."""
        return self._spec("postgres", self.inventory.postgres)

    def redis_spec(self) -> Redis:
        """The inventory entry of the failing Redis target (WrongTargetKind otherwise)."""
        return self._spec("redis", self.inventory.redis)

    def http_spec(self) -> HttpEndpoint:
        """The inventory entry of the failing HTTP endpoint (WrongTargetKind otherwise)."""
        return self._spec("http", self.inventory.http)

    def host_spec(self) -> Host:
        """The inventory entry of the failing host (WrongTargetKind otherwise)."""
        return self._spec("host", self.inventory.hosts)

    def compose_spec(self) -> Compose:
        """The compose project of the failing compose service (WrongTargetKind otherwise)."""
        if self.target_kind != "compose" or self.inventory.compose is None:
            raise WrongTargetKind(
                f"{self.fix_name or 'the fix'} wants a compose service, but {self.check_id} "
                f"failed on {self.target_kind or 'a'} target {self.target!r}"
            )
        return self.inventory.compose

    def service(self) -> str:
        """The runtime's name for the target's service."""
        specs: dict[str, Callable[[], HttpEndpoint | Postgres | Redis]] = {
            "http": self.http_spec, "postgres": self.postgres_spec, "redis": self.redis_spec,
        }  # fmt: skip
        spec = specs.get(self.target_kind)
        return (spec().service if spec else None) or self.target

    def runtime(self) -> Runtime:
        if self._runtime is None:
            self._runtime = runtime_for(self.inventory)
        if self._runtime is None:
            raise NoRuntime("the inventory names no runtime (sandbox or compose)")
        return self._runtime

    def _admin(self, spec: Postgres | Redis) -> Admin:
        admin = spec.admin
        if admin is None:
            raise PermissionError(
                f"{self.target_kind} {self.target} has no admin credentials in the inventory"
            )
        return admin

    def postgres_admin(self) -> psycopg.Connection[Any]:
        """A connection with the remediation role (credentials read now, not at start)."""
        import psycopg

        spec = self.postgres_spec()
        admin = self._admin(spec)
        return psycopg.connect(
            host=spec.host, port=spec.port, dbname=spec.database, user=admin.user,
            password=admin.password.resolve().reveal() if admin.password else None,
            sslmode=spec.sslmode, connect_timeout=max(2, round(self.thresholds.timeout_s)),
            application_name="opsbook-remediation", autocommit=True,
        )  # fmt: skip

    def redis_admin(self) -> redis.Redis:
        import redis

        spec = self.redis_spec()
        admin = self._admin(spec)
        # The URL names the checker (redis://opsbook@host): from_url would let that user win
        # over `username`, so the admin's password would be tried for the checker.
        url = urlsplit(spec.url)
        url = url._replace(netloc=url.netloc.rpartition("@")[2])
        return redis.Redis.from_url(
            url.geturl(), username=admin.user,
            password=admin.password.resolve().reveal() if admin.password else None,
            socket_timeout=self.thresholds.timeout_s, decode_responses=True,
        )  # fmt: skip
