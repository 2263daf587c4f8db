"""The audit summary: the `-m audit` checks of a run by control family, the document a security
reviewer asks for.

For each control family: how many of its checks passed, failed, were waived, were not
applicable (and could not be evaluated, were blocked, or were fixed), and each failure with its
evidence as findings.json has it (already redacted by the run). Computed from a findings.json
document alone, so that a merged fleet's document gives one too; written beside it as
audit-summary.json (`summarize`), and shown as HTML by `html_table`.

A control family groups the audit checks by what they protect. It is read from the check's id:
a whole id, else its id's prefix without the last digit (SEC-01x are PostgreSQL's access
controls); an audit check in no family listed here is in the family named after its area, so
that nothing is left out of the summary.
"""

from __future__ import annotations

from html import escape
from typing import Any

from opsbook.pages import present

SUMMARY_VERSION = 1
FILE_NAME = "audit-summary.json"
AUDIT = "audit"

# Longest key first wins: a whole id before its decade.
FAMILIES: dict[str, str] = {
    "ACCESS-001": "Accounts",
    "ACCESS-002": "Accounts",
    "ACCESS-003": "Network exposure",
    "ACCESS-004": "Network exposure",
    "SEC-00": "Secrets",
    "SEC-077": "Secrets",
    "SEC-01": "Database access (PostgreSQL)",
    "SEC-02": "Queue access (Redis)",
    "SEC-03": "Web entry and TLS",
    "SEC-04": "Dashboard access (Grafana)",
    "SEC-05": "Signs of attack",
    "SEC-06": "Known vulnerabilities",
    "SEC-07": "Container isolation and limits",
    "SEC-08": "Container isolation and limits",
}
# The counts of a family, in opsbook's words (docs/contracts.md#outcomes): every one is there,
# a zero included, so that a reviewer reads "0 failed", not a missing key.
COUNTED = {
    "passed": "passed",
    "failed": "failed",
    "waived": "waived",
    "skipped": "not_applicable",
    "error": "could_not_evaluate",
    "blocked": "blocked",
    "fixed": "fixed",
}
FAILURE_FIELDS = (
    "check_id", "title", "severity", "deployment", "target", "outcome", "observed", "unit",
    "expected", "message", "risk", "evidence", "waiver", "blocked_by",
)  # fmt: skip


def family_of(check_id: str, markers: list[str] | None = None) -> str:
    """The control family of an audit check (its area's name when none is listed)."""
    for key in sorted(FAMILIES, key=len, reverse=True):
        if check_id.startswith(key):
            return FAMILIES[key]
    return f"Other: {present.area_of(list(markers or []), check_id)}"


def is_audit(row: dict[str, Any]) -> bool:
    return AUDIT in (row.get("markers") or [])


def summarize(document: dict[str, Any]) -> dict[str, Any]:
    """audit-summary.json of a findings.json document: its audit checks by control family."""
    summary: dict[str, Any] = document.get("run") or {}
    rows = [row for row in document.get("findings") or [] if is_audit(row)]
    families: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        families.setdefault(family_of(str(row["check_id"]), row.get("markers")), []).append(row)
    listed = []
    for name, mine in sorted(families.items()):
        counts = dict.fromkeys(COUNTED.values(), 0)
        for row in mine:
            counts[COUNTED.get(row["outcome"], "failed")] += 1
        failures = [
            {field: row.get(field) for field in FAILURE_FIELDS if row.get(field) is not None}
            for row in sorted(mine, key=lambda r: present.row_order(r["outcome"], r["severity"]))
            if present.needs_a_person(row["outcome"]) or row["outcome"] == "waived"
        ]
        listed.append(
            {
                "family": name,
                "checks": sorted({str(row["check_id"]) for row in mine}),
                "results": len(mine),
                **counts,
                "failures": failures,
            }
        )
    totals = dict.fromkeys(COUNTED.values(), 0)
    for row in rows:
        totals[COUNTED.get(row["outcome"], "failed")] += 1
    return {
        "summary_version": SUMMARY_VERSION,
        "run": {
            key: summary.get(key)
            for key in ("run_id", "started", "finished", "inventory", "selection", "provenance")
        },
        "verdict": present.verdict(_outcomes(rows)).headline,
        "totals": {"results": len(rows), **totals},
        "families": listed,
    }


def _outcomes(rows: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["outcome"]] = counts.get(row["outcome"], 0) + 1
    return counts


def html_table(summary: dict[str, Any]) -> str:
    """The summary's families as an HTML table (escaped), for a page that shows it."""
    columns = ("passed", "failed", "waived", "not_applicable", "could_not_evaluate")
    head = "".join(
        f"<th>{escape(c.replace('_', ' '))}</th>" for c in ("family", *columns, "failures")
    )
    body = []
    for family in summary["families"]:
        failures = "; ".join(
            f"{f['check_id']} {f.get('target') or '-'}: {present.text(f.get('message') or '')}"
            for f in family["failures"]
        )
        cells = [family["family"], *(str(family[c]) for c in columns), failures]
        body.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    return (
        f'<table class="opsbook-table" id="opsbook-audit-families"><tr>{head}</tr>'
        f"{''.join(body)}</table>"
    )


def html_section(summary: dict[str, Any]) -> str:
    """The families as report.html shows them, below its audit summary."""
    return (
        '<section id="opsbook-audit-by-family"><h3>Audit checks by control family</h3>'
        f"{html_table(summary)}</section>"
    )
