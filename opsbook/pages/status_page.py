"""The status page: one run's findings.json as a page an on-call engineer reads at a glance.

Rendered from the findings.json document alone (so that merged shards or deployments can
produce it too): the verdict first, then each area and each target with its worst outcome,
worst first, then what needs a person with observed and expected values and their units. One
self-contained file: no script, no external style or image, readable on a phone, printable.

It shows only what a web server's group may see: check ids, titles, targets, outcomes, values
and one-line messages (already redacted by the run). Evidence, fix plans, paths on the runner
and the audit log's hashes stay in findings.json and report.html.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from html import escape
from typing import Any

from opsbook.pages import present

Row = dict[str, Any]

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: Helvetica, Arial, sans-serif; font-size: 14px; margin: 12px; color: #222;
  max-width: 60rem; }}
h1 {{ font-size: 20px; margin: 0 0 8px; }}
h2 {{ font-size: 16px; margin: 16px 0 4px; }}
table {{ width: 100%; }}
/* A phone: each check a card, each cell a line named by its column. */
@media (max-width: 600px) {{
  table.cards, table.cards tbody, table.cards tr, table.cards td {{ display: block; }}
  table.cards tr.head {{ display: none; }}
  table.cards tr {{ border-top: 2px solid #ccc; padding: 4px 0; }}
  table.cards td {{ border: none; padding: 1px 4px; }}
  table.cards td:empty {{ display: none; }}
  table.cards td[data-label]::before {{ content: attr(data-label) ": "; font-weight: bold; }}
}}
/* A row blocked by a dependency, under its cause: indented, with a bar on its left. */
tr.under > td:first-child {{ padding-left: calc(var(--depth) * 1.2em);
  border-left: 3px solid #b02a37; }}
@media (max-width: 600px) {{
  table.cards tr.under {{ margin-left: calc(var(--depth) * 1em); border-left: 3px solid #b02a37;
    padding-left: 4px; }}
  table.cards tr.under > td:first-child {{ padding-left: 4px; border-left: none; }}
}}
{style}
</style>
</head>
<body>
<h1>{title}</h1>
{verdict}
{facts}
{sections}
</body>
</html>
"""


def _verdict(headline: str, kind: str, counts: str) -> str:
    return (
        f'<div class="opsbook-verdict {escape(kind)}" id="verdict">'
        f'<span class="headline">{escape(headline)}</span>'
        f'<span class="counts">{escape(counts)}</span></div>'
    )


def _outcome(outcome: str) -> str:
    return f'<span class="outcome {escape(outcome)}">{escape(present.word(outcome))}</span>'


def _worst(rows: Iterable[Row]) -> Row:
    """The row that gives a group its state: the worst outcome, of the highest severity."""
    return min(
        rows,
        key=lambda r: (present.outcome_rank(r["outcome"]), -present.severity_of(r["severity"])),
    )


def _groups(rows: list[Row], key: Callable[[Row], str]) -> list[tuple[str, list[Row]]]:
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)

    def order(item: tuple[str, list[Row]]) -> tuple[int, int, str]:
        worst = _worst(item[1])
        return (
            present.outcome_rank(worst["outcome"]),
            -present.severity_of(worst["severity"]),
            item[0],
        )

    return sorted(groups.items(), key=order)


def _group_table(name: str, groups: list[tuple[str, list[Row]]], element_id: str) -> str:
    body = []
    for group, rows in groups:
        worst = _worst(rows)
        counts = present.verdict(_count(rows)).counts
        body.append(
            f"<tr><td>{escape(group)}</td><td>{_outcome(worst['outcome'])}</td>"
            f"<td>{escape(counts)}</td></tr>"
        )
    return (
        f'<table class="opsbook-table" id="{element_id}"><tr><th>{escape(name)}</th>'
        f"<th>state</th><th>checks</th></tr>{''.join(body)}</table>"
    )


def _count(rows: Iterable[Row]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["outcome"]] = counts.get(row["outcome"], 0) + 1
    return counts


def _target(row: Row, several_deployments: bool = False) -> str:
    """The target's name (the deployment's, for a check of the whole deployment); a page that
    spans deployments keeps their targets apart as deployment/target."""
    deployment = row.get("deployment")
    target = row.get("target")
    if not target:
        return str(deployment or "-")
    return f"{deployment}/{target}" if several_deployments and deployment else str(target)


def _area(row: Row) -> str:
    return present.area_of(list(row.get("markers") or []), str(row["check_id"]))


COLUMNS = ("outcome", "check", "severity", "target", "title", "observed", "expected")


def _findings_table(rows: list[Row], element_id: str, several_deployments: bool) -> str:
    """The rows cause first (present.cause_first): a row blocked by a dependency right after
    its cause's row, indented under it."""
    body = []
    for index, depth in present.cause_first(rows):
        row = rows[index]
        note = "" if row["outcome"] == "passed" else present.text(row.get("message") or "")
        if row.get("waiver"):
            note = f"waiver: {present.text(row['waiver'])}"
        blocked_by = row.get("blocked_by")
        if blocked_by:
            note = f"blocked by {present.text(blocked_by)}"
        title = escape(present.text(row.get("title") or ""))
        cells = (
            _outcome(row["outcome"]),
            escape(str(row["check_id"])),
            escape(str(row["severity"])),
            escape(_target(row, several_deployments)),
            title + (f'<span class="note">{escape(note)}</span>' if note else ""),
            escape(present.row_value(row)),
            escape(present.expected_shown(row.get("expected"), row.get("unit"))),
        )
        # data-label names the cell where a phone shows the row as a card.
        under = f' class="under" style="--depth: {depth}"' if depth else ""
        body.append(
            f"<tr{under}>"
            + "".join(f'<td data-label="{c}">{v}</td>' for c, v in zip(COLUMNS, cells, strict=True))
            + "</tr>"
        )
    head = "".join(f"<th>{column}</th>" for column in COLUMNS)
    return (
        f'<table class="opsbook-table cards" id="{element_id}">'
        f'<tr class="head">{head}</tr>{"".join(body)}</table>'
    )


def _facts(facts: dict[str, str]) -> str:
    items = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in facts.items())
    return f'<dl class="opsbook-facts">{items}</dl>'


def render(document: dict[str, Any], *, groups: str = "", more: str = "") -> str:
    """The page of one findings.json document (a run's, or several merged).

    The page across runs (opsbook.pages.run_strip) gives its own `groups` (each area and target
    with the strip of its last runs) in place of this run's, and `more` (trends, the runs'
    reports) before every check."""
    summary: dict[str, Any] = document.get("run") or {}
    rows: list[Row] = list(document.get("findings") or [])
    counts = summary.get("counts") or _count(rows)
    judged = present.verdict(counts)
    inventory = present.text(summary.get("inventory") or "?")
    facts = {
        "Deployment": inventory,
        "Selection": present.text(summary.get("selection") or "all checks"),
        "Run": present.text(summary.get("run_id") or "?"),
        "Finished": present.text(summary.get("finished") or "?"),
    }
    made = summary.get("provenance") or {}
    if made:
        facts["Produced by"] = present.text(
            f"opsbook {made.get('opsbook_version')} (commit {str(made.get('commit'))[:12]}), "
            f"run by {made.get('operator')}"
        )
        if made.get("inventory_sha256"):
            facts["Inventory SHA-256"] = present.text(made["inventory_sha256"])
    attention = [r for r in rows if present.needs_a_person(r["outcome"])]
    several = len({r.get("deployment") for r in rows}) > 1
    sections = [
        groups
        or "\n".join(
            [
                "<h2>By area</h2>",
                _group_table("area", _groups(rows, _area), "areas"),
                "<h2>By target</h2>",
                _group_table("target", _groups(rows, lambda r: _target(r, several)), "targets"),
            ]
        ),
        f"<h2>Needs a person ({len(attention)})</h2>",
        _findings_table(attention, "attention", several) if attention else "<p>Nothing.</p>",
        more,
        "<h2>Every check</h2>",
        _findings_table(rows, "findings", several),
    ]
    return PAGE.format(
        title=escape(f"opsbook status: {inventory}"),
        style=present.STYLE,
        verdict=_verdict(judged.headline, judged.kind, judged.counts),
        facts=_facts(facts),
        sections="\n".join(sections),
    )


def render_unknown(reason: str) -> str:
    """The page when there is no run to show (or its findings.json cannot be read)."""
    return PAGE.format(
        title="opsbook status: unknown",
        style=present.STYLE,
        verdict=_verdict("UNKNOWN", "not-evaluated", present.text(reason)),
        facts="",
        sections="",
    )
