"""Typed stash keys shared by the plugin's modules."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from msgspec import Struct, field

from opsbook.check import CheckSpec
from opsbook.secrets import Redactor

if TYPE_CHECKING:
    from opsbook.inventory import Inventory
    from opsbook.targets import Targets


class CheckInfo(Struct, frozen=True):
    """A collected check: its declaration plus what collection learned about it."""

    spec: CheckSpec
    title: str
    rationale: str
    target: str | None
    markers: tuple[str, ...]


class Findings(Struct):
    """One row per check and target, in the order they finished."""

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.rows.values():
            counts[row["outcome"]] = counts.get(row["outcome"], 0) + 1
        return counts


INVENTORY: pytest.StashKey[Inventory | None] = pytest.StashKey()
REDACTOR = pytest.StashKey[Redactor]()
CHECK = pytest.StashKey[CheckInfo]()
FINDINGS = pytest.StashKey[Findings]()
# The run's targets, once the first check needed them (fixtures/targets.py): a fix resets them
# all, since what one check cached about a target may no longer be true.
TARGETS: pytest.StashKey[Targets] = pytest.StashKey()
# What the run could not add to its audit trail, and why: its report folder, an applied fix's
# audit-log entry (a full disk, say). A line each; the run then exits 11.
AUDIT_TRAIL_GAPS = pytest.StashKey[list[str]]()


def audit_trail_gap(config: pytest.Config, line: str) -> None:
    config.stash.setdefault(AUDIT_TRAIL_GAPS, []).append(line)
