"""The audit summary (audit-summary.json beside a run's findings.json): the `-m audit` checks by
control family, passed / failed / waived / not applicable, each failure with its evidence."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from html import escape
from pathlib import Path
from typing import Any

import pytest
from support import RunChecks
from test_audit import audit_inventory

from opsbook.pages import audit_summary
from opsbook.sandbox.stack import Stack


def shipped_audit_checks() -> list[dict[str, Any]]:
    """The packaged checks marked audit, as `opsbook list` reads them."""
    listed = subprocess.run(
        [sys.executable, "-m", "opsbook", "list", "-m", "audit", "--format", "json"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    checks: list[dict[str, Any]] = json.loads(listed.stdout)["checks"]
    assert checks, listed.stderr
    return checks


def test_every_shipped_audit_check_is_in_a_named_control_family() -> None:
    orphans = [
        check["id"]
        for check in shipped_audit_checks()
        if audit_summary.family_of(check["id"], check["areas"]).startswith("Other")
    ]
    assert orphans == [], "add them to opsbook.pages.audit_summary.FAMILIES"


@pytest.mark.breaks("SEC-001")
def test_an_audit_run_lists_every_control_family_with_its_failures_evidence(
    sandbox: Stack, run_checks: RunChecks, tmp_path: Path
) -> None:
    inventory = audit_inventory(sandbox, tmp_path / "inventory.yaml")
    env = sandbox.dir / ".env"  # a secret file SEC-001 reads (ensure_env_file)
    env.chmod(0o644)
    try:
        run = run_checks("-m", "audit", inventory=inventory, reports=tmp_path / "reports")
    finally:
        env.chmod(0o600)
    assert run.row("SEC-001")["outcome"] == "failed", run.output
    written = tmp_path / "reports" / "latest" / audit_summary.FILE_NAME
    assert stat.S_IMODE(written.stat().st_mode) == 0o640
    summary = json.loads(written.read_text())
    assert summary == audit_summary.summarize(run.document)

    families = {family["family"]: family for family in summary["families"]}
    expected = {audit_summary.family_of(c["id"], c["areas"]) for c in shipped_audit_checks()}
    assert set(families) == expected
    # Every audit check of the run is counted once, in one family.
    audit_rows = [r for r in run.rows if "audit" in r["markers"]]
    counted = ("passed", "failed", "waived", "not_applicable", "could_not_evaluate", "blocked",
               "fixed")  # fmt: skip
    assert sum(f["results"] for f in summary["families"]) == len(audit_rows)
    for family in summary["families"]:
        assert family["results"] == sum(family[key] for key in counted), family
    assert summary["totals"]["results"] == len(audit_rows)
    assert summary["verdict"] == "FAILED"
    assert summary["run"]["run_id"] == run.document["run"]["run_id"]

    secrets = families["Secrets"]
    assert secrets["failed"] == 1
    assert "SEC-001" in secrets["checks"]
    (failure,) = secrets["failures"]
    assert failure["check_id"] == "SEC-001"
    assert failure["message"] == f"host local: {env} has mode 0644 (expected 0600 or stricter)"
    assert f"{env} mode 0644 owner" in failure["evidence"]["files (path, mode, owner)"]
    assert "any local user or compromised service can read" in failure["risk"]
    # The same families in report.html, below its audit summary.
    report = (tmp_path / "reports" / "latest" / "report.html").read_text()
    shown = report[report.index('id="opsbook-audit-by-family"') :]
    assert all(f"<td>{escape(name)}</td>" in shown for name in families)
    assert "SEC-001 local: host local: " in shown
    # The sandbox has no Grafana: its family is there, not applicable, not left out.
    grafana = families["Dashboard access (Grafana)"]
    assert grafana["not_applicable"] == grafana["results"] > 0
    assert grafana["failures"] == []


def test_a_run_without_audit_checks_writes_no_audit_summary(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_findings_schema import run_folder
    from test_html_report import healing_suite

    suite = healing_suite(pytester, monkeypatch)
    suite.runpytest("-m", "daily")
    assert not (run_folder(suite) / audit_summary.FILE_NAME).exists()


def test_a_waived_failure_is_listed_with_its_waiver() -> None:
    """From a findings.json document alone (a merged fleet's makes one too)."""
    row = {
        "check_id": "SEC-010", "title": "No trust.", "target": "chatdb", "deployment": "eu",
        "markers": ["audit", "security"], "severity": "critical", "outcome": "waived",
        "message": "postgres chatdb: trust", "observed": ["line 1"], "expected": "no trust",
        "evidence": {"pg_hba_file_rules": "trust"}, "waiver": "alice, SEC-9, until 2999-01-01",
    }  # fmt: skip
    daily = {**row, "check_id": "HEALTH-001", "markers": ["daily"], "outcome": "failed"}
    summary = audit_summary.summarize({"run": {"run_id": "x"}, "findings": [row, daily]})
    (family,) = summary["families"]
    assert family["family"] == "Database access (PostgreSQL)"
    assert (family["waived"], family["failed"], family["passed"]) == (1, 0, 0)
    assert family["failures"][0]["waiver"] == "alice, SEC-9, until 2999-01-01"
    assert family["failures"][0]["evidence"] == {"pg_hba_file_rules": "trust"}
    assert summary["verdict"] == "PASSED"  # a waived failure does not fail the audit
    assert "<td>Database access (PostgreSQL)</td>" in audit_summary.html_table(summary)
