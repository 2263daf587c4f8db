"""The `@check` decorator: it only annotates; the plugin validates at collection."""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

# Cadences say when a check runs; areas say what it looks at. `--strict-markers` rejects others.
CADENCES = {
    "daily": "the daily health runbook, run from cron",
    "weekly": "slower checks run once a week (restore drill)",
    "predeploy": "gate before a deploy; a failure means do not deploy",
    "postdeploy": "gate after a deploy; a failure means roll back",
    "audit": "the security and access audit",
}
AREAS = {
    "health": "services answer and report themselves healthy",
    "database": "PostgreSQL",
    "queue": "the Redis message queue",
    "resources": "disk, memory and CPU",
    "observability": "Prometheus, Grafana and alert rules",
    "logs": "errors in the service logs",
    "network": "connectivity beyond the stack (opt-in)",
    "security": "hardening of the stack",
    "access": "who and what can reach the stack",
    "backup": "backups exist, are complete and restore",
    "compose": "the stack as a compose project on a container engine",
}


CHECK_ID = re.compile(r"^[A-Z][A-Z0-9]*(-[A-Z][A-Z0-9]*)*-\d{3}$")
ATTRIBUTE = "__opsbook_check__"

F = TypeVar("F", bound=Callable[..., Any])


class Severity(enum.IntEnum):
    """How bad a failure is; the order is used to sort reports."""

    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class CheckSpec:
    """What a check declares about itself."""

    check_id: str
    severity: Severity
    remediation: Callable[..., Any] | None = None

    @property
    def remediation_name(self) -> str | None:
        fix = self.remediation
        return None if fix is None else f"{fix.__module__}.{fix.__qualname__}"


def check(
    check_id: str, severity: Severity, *, remediation: Callable[..., Any] | None = None
) -> Callable[[F], F]:
    """Mark a test function as opsbook check `check_id` with its severity and linked fix."""

    def annotate(function: F) -> F:
        setattr(function, ATTRIBUTE, CheckSpec(check_id, severity, remediation))
        return function

    return annotate


def spec_of(function: object) -> CheckSpec | None:
    spec = getattr(function, ATTRIBUTE, None)
    return spec if isinstance(spec, CheckSpec) else None
