"""The `@check` decorator: it only annotates; the plugin validates at collection."""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

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
