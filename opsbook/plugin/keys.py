"""Typed stash keys shared by the plugin's modules."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

import pytest
from msgspec import Struct, field

from opsbook.check import CheckSpec
from opsbook.outcome import Outcome
from opsbook.secrets import Redactor

if TYPE_CHECKING:
    from opsbook.inventory import Inventory
    from opsbook.targets import Targets


class Prop(enum.StrEnum):
    """The keys a check's report carries in `user_properties`: the one channel that reaches
    JUnit, pytest-html, findings.json, and survives pytest-xdist."""

    CHECK_ID = "check_id"
    TITLE = "title"
    RISK = "risk"
    SEVERITY = "severity"
    TARGET = "target"
    TARGET_KIND = "target_kind"
    DEPLOYMENT = "deployment"
    MARKERS = "markers"
    REMEDIATION = "remediation"
    OBSERVED = "observed"
    EXPECTED = "expected"
    UNIT = "unit"
    UNREACHABLE = "unreachable"
    WAIVER = "waiver"
    WAIVED_MESSAGE = "waived_message"
    REMEDIATION_STATUS = "remediation_status"
    REMEDIATION_VERDICT = "remediation_verdict"
    REMEDIATION_REASON = "remediation_reason"
    REMEDIATION_PLAN = "remediation_plan"
    BEFORE = "before"
    AFTER = "after"
    # The services a check is about (comma-separated), and the dependency that blocks it.
    SERVICES = "services"
    BLOCKED_BY = "blocked_by"


# A piece of evidence travels as ("evidence:NAME", text).
EVIDENCE_PREFIX = "evidence:"


class CheckInfo(Struct, frozen=True):
    """A collected check: its declaration plus what collection learned about it."""

    spec: CheckSpec
    title: str
    rationale: str
    target: str | None
    markers: tuple[str, ...]
    # How messages name the target: "redis queue", "host web1", "backend".
    label: str = ""


class FixAttempt(Struct, kw_only=True):
    """What the linked fix of a failing check did, as findings.json records it."""

    status: str
    verdict: str | None = None
    reason: str | None = None
    plan: list[str] = field(default_factory=list)
    before: str | None = None
    after: str | None = None


class FindingRow(Struct, kw_only=True):
    """One check on one target: the row findings.json, metrics and `opsbook status` read."""

    check_id: str
    title: str
    target: str | None
    markers: list[str]
    severity: str
    nodeid: str
    # Until the check's call reports: a run interrupted in its setup or its call must not
    # record it as passed.
    outcome: Outcome = Outcome.NOT_EVALUATED
    message: str = "did not finish: the run was interrupted"
    risk: str = ""
    deployment: str | None = None
    target_kind: str | None = None
    unreachable: bool = False
    # Typed: a number stays a number (with its unit), a structure an object.
    observed: Any = None
    expected: str | None = None
    unit: str | None = None
    remediation: str | None = None
    duration_s: float = 0.0
    evidence: dict[str, str] = field(default_factory=dict)
    waiver: str | None = None
    remediation_attempt: FixAttempt | None = None
    # The service whose failure blocks this check (the inventory's services), when blocked.
    blocked_by: str | None = None
    # The services the check is about: a blocked row's cause is the row of its blocked_by.
    services: list[str] = field(default_factory=list)


class Findings(Struct):
    """One row per check and target, in the order they finished."""

    rows: dict[str, FindingRow] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.rows.values():
            counts[row.outcome] = counts.get(row.outcome, 0) + 1
        return counts

    def to_builtins(self) -> list[dict[str, Any]]:
        """The rows as findings.json writes them."""
        from msgspec import to_builtins

        return [to_builtins(row) for row in self.rows.values()]


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
# The run's id, once the reports plugin has made the run's folder (fixes record it in the audit
# log); here so that the remediation plugin need not import the reports plugin, which imports it.
RUN_ID = pytest.StashKey[str]()


def audit_trail_gap(config: pytest.Config, line: str) -> None:
    config.stash.setdefault(AUDIT_TRAIL_GAPS, []).append(line)
