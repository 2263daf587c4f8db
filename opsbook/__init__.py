"""opsbook: operations runbooks as executable, trustworthy checks.

Everything a check author needs is exported here: the `check` decorator and `Severity`, the
`Finding` a check reports through, `NotEvaluated` (and `TargetUnreachable`) for "could not
evaluate", the outcomes and units, and the target types the fixtures hand to checks. The
names beyond `check`, `Severity` and the errors are imported when first used, so that
`import opsbook` stays cheap for the commands.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from opsbook.check import Severity, check
from opsbook.errors import NotEvaluated, TargetUnreachable

if TYPE_CHECKING:
    from opsbook.inventory import Inventory, Thresholds
    from opsbook.outcome import FixVerdict, Outcome, Unit
    from opsbook.plugin.findings import Finding
    from opsbook.remediate.context import Context
    from opsbook.remediate.plan import Plan
    from opsbook.targets import HostTarget, HttpTarget, PostgresTarget, RedisTarget, Targets

_LAZY = {
    "Inventory": "opsbook.inventory",
    "Thresholds": "opsbook.inventory",
    "FixVerdict": "opsbook.outcome",
    "Outcome": "opsbook.outcome",
    "Unit": "opsbook.outcome",
    "Finding": "opsbook.plugin.findings",
    "Context": "opsbook.remediate.context",
    "Plan": "opsbook.remediate.plan",
    "HostTarget": "opsbook.targets",
    "HttpTarget": "opsbook.targets",
    "PostgresTarget": "opsbook.targets",
    "RedisTarget": "opsbook.targets",
    "Targets": "opsbook.targets",
}

__all__ = [
    "Context", "Finding", "FixVerdict", "HostTarget", "HttpTarget", "Inventory", "NotEvaluated",
    "Outcome", "Plan", "PostgresTarget", "RedisTarget", "Severity", "TargetUnreachable",
    "Targets", "Thresholds", "Unit", "check",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    # PEP 562: the module is imported on first use; the TYPE_CHECKING block above lets type
    # checkers see every name.
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'opsbook' has no attribute {name!r}")
