"""The `finding` fixture, and the row each check leaves behind for findings.json."""

from __future__ import annotations

import json
from typing import Any

import pytest

from opsbook.plugin.keys import FINDINGS, REDACTOR, Findings
from opsbook.secrets import Redactor

EVIDENCE_PREFIX = "evidence:"
MAX_EVIDENCE_CHARS = 4000


class Finding:
    """What a check observed: the measured value and the evidence behind a verdict."""

    def __init__(self, node: pytest.Item, redact: Redactor) -> None:
        self._node = node
        self._redact = redact

    def _set(self, name: str, value: str) -> None:
        properties = self._node.user_properties
        properties[:] = [(k, v) for k, v in properties if k != name]
        properties.append((name, self._redact(value)))

    def observe(self, value: object, *, expected: object = None) -> None:
        """Record the measured value (and what was expected) for the report."""
        self._set("observed", value if isinstance(value, str) else json.dumps(value, default=str))
        if expected is not None:
            self._set("expected", str(expected))

    def attach(self, name: str, content: object) -> None:
        """Keep evidence (a response body, rows, log lines), redacted and cut to size."""
        text = content if isinstance(content, str) else json.dumps(content, default=str, indent=1)
        if len(text) > MAX_EVIDENCE_CHARS:
            text = text[:MAX_EVIDENCE_CHARS] + f"\n... ({len(text) - MAX_EVIDENCE_CHARS} more)"
        self._set(EVIDENCE_PREFIX + name, text)


@pytest.fixture
def finding(request: pytest.FixtureRequest) -> Finding:
    """Record observed values and evidence for this check's row in the reports."""
    node = request.node
    assert isinstance(node, pytest.Item)
    return Finding(node, request.config.stash[REDACTOR])


def pytest_configure(config: pytest.Config) -> None:
    findings = config.stash[FINDINGS] = Findings()
    config.pluginmanager.register(_Recorder(findings), "opsbook-findings")


def _first_line(report: pytest.TestReport) -> str:
    text = str(report.longrepr) if report.longrepr else ""
    if report.skipped and isinstance(report.longrepr, tuple):
        text = str(report.longrepr[2]).removeprefix("Skipped: ")
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _new_row(nodeid: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "check_id": properties["check_id"],
        "title": properties["title"],
        "target": properties["target"] or None,
        "markers": [m for m in properties["markers"].split(",") if m],
        "severity": properties["severity"],
        # Until the check's call reports: a run interrupted in its setup or its call must
        # not record it as passed.
        "outcome": "error",
        "unreachable": False,
        "observed": None,
        "expected": None,
        "message": "did not finish: the run was interrupted",
        "target_kind": properties.get("target_kind") or None,
        "remediation": properties["remediation"] or None,
        "duration_s": 0.0,
        "evidence": {},
        "nodeid": nodeid,
    }


def _attempt(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "status": properties["remediation_status"],
        "verdict": properties["remediation_verdict"] or None,
        "reason": properties["remediation_reason"] or None,
        "plan": [line for line in properties["remediation_plan"].splitlines() if line],
        "before": properties["before"] or None,
        "after": properties["after"] or None,
    }


class _Recorder:
    """Folds the setup, call and teardown reports of each check into one row."""

    def __init__(self, findings: Findings) -> None:
        self.findings = findings

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        properties = dict(report.user_properties)
        if "check_id" not in properties:
            return
        row = self.findings.rows.setdefault(report.nodeid, _new_row(report.nodeid, properties))
        row["duration_s"] = round(row["duration_s"] + report.duration, 4)
        row["observed"] = properties.get("observed", row["observed"])
        row["expected"] = properties.get("expected", row["expected"])
        row["evidence"].update(
            {
                k.removeprefix(EVIDENCE_PREFIX): v
                for k, v in properties.items()
                if k.startswith(EVIDENCE_PREFIX)
            }
        )
        if "unreachable" in properties:
            row["unreachable"] = True
        if report.when == "call":
            # A target lost in the middle of a check still means "could not evaluate".
            unreachable = report.failed and "unreachable" in properties
            row["outcome"] = "error" if unreachable else report.outcome
            row["message"] = "" if report.passed else _first_line(report)
            if "waiver" in properties:
                row["waiver"] = properties["waiver"]
                if report.skipped:
                    row["outcome"] = "waived"
                    row["message"] = properties.get("waived_message", "")
            if "remediation_status" in properties:
                row["remediation_attempt"] = _attempt(properties)
                if properties["remediation_verdict"] == "FIXED":
                    row["outcome"] = "fixed"
                    row["message"] = properties["before"]
        elif report.skipped:
            row["outcome"], row["message"] = "skipped", _first_line(report)
        elif report.failed and row["outcome"] != "failed":
            # A failing setup or teardown means the check could not be evaluated.
            row["outcome"], row["message"] = "error", _first_line(report)


def rows(config: pytest.Config) -> list[dict[str, Any]]:
    return list(config.stash[FINDINGS].rows.values())
