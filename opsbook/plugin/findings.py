"""The `finding` fixture: how a check records what it observed and reaches its verdict.

A check observes through a probe, then compares once:

    usage = disk_usage(host, path, timeout_s=thresholds.timeout_s)
    finding.expect(usage.used_percent, f"<= {limit:g}", ok=usage.used_percent <= limit,
                   unit=Unit.PERCENT)

`expect` records the observed value (typed: numbers stay numbers, with their unit) and the
expected one for every report, and fails with one message built from the target's label:
`host web1: 93 % (expected <= 80)`. `expect_none` does the same for a list of problems.
A check that cannot observe raises `NotEvaluated` (or lets a probe raise it): ERROR, not FAIL.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from typing import Any, NoReturn

import msgspec
import pytest

from opsbook.errors import NotEvaluated
from opsbook.outcome import Outcome, Unit
from opsbook.plugin.keys import (
    CHECK,
    EVIDENCE_PREFIX,
    FINDINGS,
    REDACTOR,
    FindingRow,
    Findings,
    FixAttempt,
    Prop,
)
from opsbook.secrets import Redactor

MAX_EVIDENCE_CHARS = 4000

__all__ = ["EVIDENCE_PREFIX", "Finding", "finding"]


class Finding:
    """What a check observed: the measured value, what was expected, and the evidence."""

    def __init__(self, node: pytest.Item, redact: Redactor) -> None:
        self._node = node
        self._redact = redact
        info = node.stash.get(CHECK, None)
        # How messages name the target ("redis queue"); a check without a target, the run.
        self.label: str = (info.label if info is not None else "") or node.name

    def _set(self, name: str, value: object) -> None:
        properties = self._node.user_properties
        properties[:] = [(k, v) for k, v in properties if k != name]
        properties.append((name, self._redacted(value)))

    def _redacted(self, value: object) -> object:
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):
            return self._redact(value)
        # A structure: redact its JSON text, so that a secret inside any string is masked,
        # and keep it a structure (JSON objects stay objects in findings.json).
        text = msgspec.json.encode(value, enc_hook=str).decode()
        masked = self._redact(text)
        return (
            msgspec.json.decode(masked)
            if masked != text
            else msgspec.to_builtins(value, enc_hook=str)
        )

    def observe(self, value: object, *, expected: object = None, unit: Unit | None = None) -> None:
        """Record the measured value (and what was expected) for the report, without a verdict."""
        self._set(Prop.OBSERVED, value)
        if unit is not None:
            self._set(Prop.UNIT, str(unit))
        if expected is not None:
            self._set(Prop.EXPECTED, str(expected))

    def expect(
        self,
        observed: object,
        expected: str,
        *,
        ok: bool,
        unit: Unit | None = None,
        problem: str | None = None,
    ) -> None:
        """Record observed and expected; unless `ok`, fail with one line naming the target.

        `problem` says what is wrong in words ("/var is 93 % full"); by default the message is
        the observed value with its unit.
        """
        self.observe(observed, expected=expected, unit=unit)
        if not ok:
            shown = problem or _shown(observed, unit)
            self.fail(f"{shown} (expected {expected})")

    def expect_none(self, problems: Sequence[str], *, expected: str = "none") -> None:
        """Record the problems found (none is the healthy state); fail listing them all."""
        self.observe(list(problems), expected=expected)
        if problems:
            self.fail("; ".join(problems))

    def fail(self, message: str) -> NoReturn:
        """A broken expectation: the check FAILs with `<target>: <message>`."""
        raise AssertionError(f"{self.label}: {message}")

    def not_evaluated(self, reason: str) -> NoReturn:
        """The facts could not be observed: the check is an ERROR ("could not evaluate")."""
        raise NotEvaluated(f"{self.label}: {reason}")

    def attach(self, name: str, content: object) -> None:
        """Keep evidence (a response body, rows, log lines), redacted and cut to size."""
        # Facts a probe returned (msgspec structs, datetimes) are shown as JSON objects too.
        builtins = msgspec.to_builtins(content, enc_hook=str)
        text = content if isinstance(content, str) else json.dumps(builtins, indent=1)
        if len(text) > MAX_EVIDENCE_CHARS:
            text = text[:MAX_EVIDENCE_CHARS] + f"\n... ({len(text) - MAX_EVIDENCE_CHARS} more)"
        self._set(EVIDENCE_PREFIX + name, text)


def _shown(value: object, unit: Unit | None) -> str:
    if unit is not None and isinstance(value, int | float) and not isinstance(value, bool):
        return unit.show(value)
    return value if isinstance(value, str) else json.dumps(value, default=str)


@pytest.fixture
def finding(request: pytest.FixtureRequest) -> Finding:
    """Record observed values and evidence for this check's row in the reports."""
    node = request.node
    assert isinstance(node, pytest.Item)
    return Finding(node, request.config.stash[REDACTOR])


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Keys and values as plain strings before anyone reads or sends the report: pytest-xdist's
    workers serialize it with execnet, which knows no enum (a Prop key is a str subclass)."""
    report.user_properties = [
        (str(key), str(value) if isinstance(value, enum.Enum) else value)
        for key, value in report.user_properties
    ]


def pytest_configure(config: pytest.Config) -> None:
    findings = config.stash[FINDINGS] = Findings()
    config.pluginmanager.register(_Recorder(findings), "opsbook-findings")


def _first_line(report: pytest.TestReport) -> str:
    text = str(report.longrepr) if report.longrepr else ""
    if report.skipped and isinstance(report.longrepr, tuple):
        text = str(report.longrepr[2]).removeprefix("Skipped: ")
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _new_row(nodeid: str, properties: dict[str, Any]) -> FindingRow:
    return FindingRow(
        check_id=properties[Prop.CHECK_ID],
        title=properties[Prop.TITLE],
        risk=properties.get(Prop.RISK, ""),
        target=properties[Prop.TARGET] or None,
        deployment=properties.get(Prop.DEPLOYMENT) or None,
        markers=[m for m in properties[Prop.MARKERS].split(",") if m],
        severity=properties[Prop.SEVERITY],
        target_kind=properties.get(Prop.TARGET_KIND) or None,
        remediation=properties[Prop.REMEDIATION] or None,
        nodeid=nodeid,
        services=[s for s in str(properties.get(Prop.SERVICES, "")).split(",") if s],
    )


def _attempt(properties: dict[str, Any]) -> FixAttempt:
    return FixAttempt(
        status=properties[Prop.REMEDIATION_STATUS],
        verdict=properties[Prop.REMEDIATION_VERDICT] or None,
        reason=properties[Prop.REMEDIATION_REASON] or None,
        plan=[line for line in properties[Prop.REMEDIATION_PLAN].splitlines() if line],
        before=properties[Prop.BEFORE] or None,
        after=properties[Prop.AFTER] or None,
    )


class _Recorder:
    """Folds the setup, call and teardown reports of each check into one row."""

    def __init__(self, findings: Findings) -> None:
        self.findings = findings

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        properties: dict[str, Any] = dict(report.user_properties)
        if Prop.CHECK_ID not in properties:
            return
        row = self.findings.rows.get(report.nodeid)
        if row is None:
            row = self.findings.rows[report.nodeid] = _new_row(report.nodeid, properties)
        row.duration_s = round(row.duration_s + report.duration, 4)
        row.observed = properties.get(Prop.OBSERVED, row.observed)
        row.expected = properties.get(Prop.EXPECTED, row.expected)
        row.unit = properties.get(Prop.UNIT, row.unit)
        row.evidence.update(
            {
                k.removeprefix(EVIDENCE_PREFIX): str(v)
                for k, v in properties.items()
                if k.startswith(EVIDENCE_PREFIX)
            }
        )
        if Prop.UNREACHABLE in properties:
            row.unreachable = True
        if report.when == "call":
            # A target lost in the middle of a check still means "could not evaluate".
            unreachable = report.failed and Prop.UNREACHABLE in properties
            row.outcome = Outcome.NOT_EVALUATED if unreachable else Outcome(report.outcome)
            row.message = "" if report.passed else _first_line(report)
            if Prop.WAIVER in properties:
                row.waiver = properties[Prop.WAIVER]
                if report.skipped:
                    row.outcome = Outcome.WAIVED
                    row.message = properties.get(Prop.WAIVED_MESSAGE, "")
            if Prop.REMEDIATION_STATUS in properties:
                row.remediation_attempt = _attempt(properties)
                if properties[Prop.REMEDIATION_VERDICT] == "FIXED":
                    row.outcome = Outcome.FIXED
                    row.message = properties[Prop.BEFORE]
        elif report.skipped:
            row.outcome, row.message = Outcome.NOT_APPLICABLE, _first_line(report)
        elif report.failed and row.outcome != Outcome.FAILED:
            # A failing setup or teardown means the check could not be evaluated.
            row.outcome, row.message = Outcome.NOT_EVALUATED, _first_line(report)


def rows(config: pytest.Config) -> list[FindingRow]:
    return list(config.stash[FINDINGS].rows.values())
