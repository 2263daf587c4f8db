"""What a remediation is given: the inventory, the failing target, and admin access on demand."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opsbook.inventory import Admin, Inventory
from opsbook.remediate.plan import Gate
from opsbook.remediate.runtime import Runtime, runtime_for

if TYPE_CHECKING:
    import psycopg
    import redis


class NoRuntime(Exception):
    """The inventory names no runtime, so services cannot be restarted from here."""


@dataclass
class Context:
    """One failing check on one target, as a remediation sees it."""

    inventory: Inventory
    check_id: str
    target_kind: str  # http, postgres, redis, host
    target: str
    run_id: str = ""
    gate: Gate = field(default=lambda step: None, repr=False)
    _runtime: Runtime | None = field(default=None, repr=False)

    @property
    def thresholds(self) -> Any:
        return self.inventory.thresholds

    def spec(self) -> Any:
        """The inventory entry of the failing target (for a compose service: the project)."""
        if self.target_kind == "compose":
            return self.inventory.compose
        sections: dict[str, dict[str, Any]] = {
            "http": dict(self.inventory.http),
            "postgres": dict(self.inventory.postgres),
            "redis": dict(self.inventory.redis),
            "host": dict(self.inventory.hosts),
        }
        return sections[self.target_kind][self.target]

    def service(self) -> str:
        """The runtime's name for the target's service."""
        if self.target_kind == "compose":
            return self.target
        return getattr(self.spec(), "service", None) or self.target

    def runtime(self) -> Runtime:
        if self._runtime is None:
            self._runtime = runtime_for(self.inventory)
        if self._runtime is None:
            raise NoRuntime("the inventory names no runtime (sandbox or compose)")
        return self._runtime

    def _admin(self) -> Admin:
        admin = getattr(self.spec(), "admin", None)
        if admin is None:
            raise PermissionError(
                f"{self.target_kind} {self.target} has no admin credentials in the inventory"
            )
        assert isinstance(admin, Admin)
        return admin

    def postgres_admin(self) -> psycopg.Connection[Any]:
        """A connection with the remediation role (credentials read now, not at start)."""
        import psycopg

        spec, admin = self.spec(), self._admin()
        return psycopg.connect(
            host=spec.host, port=spec.port, dbname=spec.database, user=admin.user,
            password=admin.password.resolve().reveal() if admin.password else None,
            sslmode=spec.sslmode, connect_timeout=max(2, round(self.thresholds.timeout_s)),
            application_name="opsbook-remediation", autocommit=True,
        )  # fmt: skip

    def redis_admin(self) -> redis.Redis:
        import redis

        spec, admin = self.spec(), self._admin()
        # The URL names the checker (redis://opsbook@host): from_url would let that user win
        # over `username`, so the admin's password would be tried for the checker.
        url = urlsplit(spec.url)
        url = url._replace(netloc=url.netloc.rpartition("@")[2])
        return redis.Redis.from_url(
            url.geturl(), username=admin.user,
            password=admin.password.resolve().reveal() if admin.password else None,
            socket_timeout=self.thresholds.timeout_s, decode_responses=True,
        )  # fmt: skip
