"""report.html: pytest-html's page, shaped only through its hooks into what an auditor signs and an
on-call engineer reads at a glance.

pytest-html 4 renders the results table in the browser from a JSON blob: each row is the list of
cells `pytest_html_results_table_row` leaves, a sortable column's value is its cell's inner HTML
(compared as a string), and the initial order is the `initial_sort` ini's column. So:

- the first screen is the verdict (worst first), then who and what produced the run, then the
  table (the summary hook's prefix, and a style that moves pytest-html's environment table and
  our audit summary below the table);
- each row says its outcome in opsbook's words (Fixed is not Passed, Waived names its owner and
  expiry, not applicable its reason), check id, severity, target, title, observed and expected
  with units; below it (pytest-html's extras), why, the risk, the waiver, the linked fix and what
  it did;
- the rows are sorted cause first (opsbook.pages.present.cause_first): what needs a person
  first, a row blocked by a dependency right after its cause and indented under it, causes by
  the worst severity they block; then the rest by severity and outcome. The Severity cell
  carries that order in a hidden key (set again once every check is settled), and is the
  initial sort unless `initial_sort` says other;
- pytest-html's own Result column, in pytest's words (XFailed, Skipped), is kept for its filters
  and hidden; the filters are labelled in opsbook's words.

Every value added is escaped here: pytest-html inserts the cells as HTML.
"""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime
from html import escape
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest

from opsbook.history import sparkline
from opsbook.outcome import Outcome
from opsbook.pages import present
from opsbook.plugin.keys import AUDIT_TRAIL_GAPS, FINDINGS, INVENTORY, FindingRow
from opsbook.plugin.waivers import WAIVERS
from opsbook.provenance import file_sha256, operator

if TYPE_CHECKING:
    from opsbook.inventory import Inventory
    from opsbook.plugin.reports import Run
    from opsbook.waivers import Waiver

# Our columns, after pytest-html's hidden Result column: (type, header, sortable).
COLUMNS = (
    ("outcome", "Outcome", True),
    ("check", "Check", True),
    ("severity", "Severity", True),
    ("target", "Target", True),
    ("title", "Title", False),
    ("observed", "Observed", False),
    ("expected", "Expected", False),
)
# pytest-html filters and counts rows by its Result column, in pytest's words; each row's is
# set from opsbook's outcome (a target lost during the call is an error, not a failure), and
# the filters are labelled as opsbook counts (a fixed check is passed in pytest's words, a
# blocked one skipped).
RESULTS = {
    Outcome.PASSED: "Passed",
    Outcome.FIXED: "Passed",
    Outcome.FAILED: "Failed",
    Outcome.NOT_EVALUATED: "Error",
    Outcome.BLOCKED: "Skipped",
    Outcome.NOT_APPLICABLE: "Skipped",
    Outcome.WAIVED: "XFailed",
}
FILTER_LABELS = {
    "passed": "Passed or fixed",
    "failed": "Failed",
    "error": "Could not evaluate",
    "skipped": "Not applicable or blocked",
    "xfailed": "Waived",
}

# The first screen: verdict, provenance, table. pytest-html's environment table (Python,
# packages) and the audit summary follow the table; nothing is wider than a phone's screen.
LAYOUT = """
body { display: flex; flex-direction: column; min-width: 0; color: #333; }
body > * { min-width: 0; }
.summary { display: contents; }
.summary__data, .summary__reload { flex: none; }
.summary__spacer { display: none; }
#results-table { order: 1; }
.additional-summary.postfix { order: 2; }
#environment-header, #environment { order: 3; }
footer { order: 4; }
#results-table .col-result, #results-table th[data-column-type="result"] { display: none; }
#results-table td { vertical-align: top; overflow-wrap: anywhere; color: #222; }
/* The audit summary's tables scroll inside themselves on a narrow screen, the page does not. */
.additional-summary.postfix table { display: block; overflow-x: auto; max-width: 100%; }
.opsbook-details p { margin: 2px 0 4px; color: #222; }
.opsbook-details pre { margin: 2px 0; white-space: pre-wrap; }
#results-table td.col-outcome { min-width: 8em; max-width: 18em; }
/* A row blocked by a dependency sits under its cause, indented, with a bar on its left. */
#results-table .opsbook-under { display: block; border-left: 3px solid #b02a37;
  padding-left: 6px; }
.controls, .filters { flex-wrap: wrap; }
/* A phone: each row a card, each cell a line named by its column. */
@media (max-width: 700px) {
  #results-table, #results-table tbody, #results-table tr, #results-table td { display: block; }
  #results-table thead, #results-table .col-testId, #results-table .col-duration,
  #results-table .col-links { display: none; }
  #results-table td { border: none; padding: 1px 5px; max-width: none; }
  #results-table td[data-label]::before { content: attr(data-label) ": "; font-weight: bold; }
  #results-table tr.collapsible { border-top: 2px solid #ccc; padding-top: 4px; }
  #results-table .extras-row.hidden { display: none; }
}
@media print {
  .controls, .filter, .logexpander { display: none; }
  .logwrapper { max-height: none; overflow: visible; }
}
"""


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(HtmlReport(config), "opsbook-html")


@pytest.hookimpl(optionalhook=True)
def pytest_metadata(metadata: dict[str, Any], config: pytest.Config) -> None:
    # pytest-metadata copies CI variables (URLs, sometimes tokens) into the report: keep only
    # what describes the run. (Who and what produced it is on the first screen.)
    keep = {"Python", "Platform", "Packages", "Plugins"}
    for key in list(metadata):
        if key not in keep:
            del metadata[key]


def fix_summary(remediation: str) -> str:
    """The first line of a linked fix's docstring (its module is imported: the check links it)."""
    module, _, name = remediation.rpartition(".")
    fix = getattr(sys.modules.get(module), name, None)
    doc = (getattr(fix, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


LABELS = {column: header for column, header, _ in COLUMNS}


def _cell(column: str, content: str) -> str:
    # data-label names the cell where a phone shows a row as a card.
    return f'<td class="col-{column}" data-label="{LABELS[column]}">{content}</td>'


def _hidden_key(key: str) -> str:
    # pytest-html sorts a column by its cell's inner HTML: a leading hidden key orders it.
    return f'<span class="sort-key" hidden>{escape(key)}</span>'


class HtmlReport:
    """pytest-html's hooks, with the run's config at hand (the row hook gets only the report)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        # pytest-html's report data, as its title hook hands it over: its outcome counts.
        self.report_data: Any = None
        # The outcome each check's row was drawn with (see _redraw_settled_rows).
        self.drawn: dict[str, Outcome] = {}

    def _row(self, report: pytest.TestReport | pytest.CollectReport) -> FindingRow | None:
        return self.config.stash[FINDINGS].rows.get(report.nodeid)

    def _waiver(self, row: FindingRow) -> Waiver | None:
        waivers = self.config.stash.get(WAIVERS, None)
        return waivers.find(row.check_id, row.target) if waivers is not None else None

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_report_title(self, report: Any) -> None:
        from opsbook.plugin.reports import RUN

        run = self.config.stash.get(RUN, None)
        inventory = self.config.stash.get(INVENTORY, None)
        parts = ["opsbook report"]
        if inventory is not None:
            parts.append(inventory.name)
        if self.config.option.markexpr:
            parts.append(f"-m {self.config.option.markexpr}")
        if run is not None:
            parts.append(f"run {run.name}")
        report.title = " · ".join(parts)
        self.report_data = report
        if self.config.getini("initial_sort") == "result":  # pytest-html's default
            report.set_data("initialSort", "severity")
        for outcome, label in FILTER_LABELS.items():
            if outcome in report.outcomes:
                report.outcomes[outcome]["label"] = label

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_table_header(self, cells: list[str]) -> None:
        cells[1:1] = [
            f'<th class="sortable" data-column-type="{column}">{header}</th>'
            if sortable
            else f'<th data-column-type="{column}">{header}</th>'
            for column, header, sortable in COLUMNS
        ]

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_table_row(
        self, report: pytest.TestReport | pytest.CollectReport, cells: list[str]
    ) -> None:
        row = self._row(report)
        if row is None:
            # Collection errors and tests that are not checks: pytest's outcome, sorted first
            # when they failed.
            outcome = "failed" if report.failed else str(report.outcome)
            mine = [
                _cell("outcome", f'<span class="outcome {outcome}">{escape(outcome)}</span>'),
                _cell("check", ""),
                _cell("severity", _hidden_key(present.sort_key(outcome, "critical"))),
                *(_cell(column, "") for column, _, _ in COLUMNS[3:]),
            ]
        else:
            mine = self._cells(row)
            self._set_result(report, RESULTS.get(row.outcome), cells)
            self.drawn[report.nodeid] = row.outcome
        cells[1:1] = mine

    def _set_result(
        self, report: pytest.TestReport | pytest.CollectReport, result: str | None, cells: list[str]
    ) -> None:
        """pytest-html's Result cell in opsbook's terms, and its counts moved along: it counts
        a row after this hook, by the result it worked out itself (setup and teardown reports
        that passed are not rows)."""
        counts = getattr(self.report_data, "outcomes", None)
        old = cells[0].removeprefix('<td class="col-result">').removesuffix("</td>")
        if result is None or result == old or counts is None:
            return
        if old.lower() not in counts or result.lower() not in counts:
            return
        cells[0] = f'<td class="col-result">{result}</td>'
        if report.when in ("call", "collect") or report.outcome != "passed":
            counts[old.lower()]["value"] -= 1
            counts[result.lower()]["value"] += 1

    def _cells(self, row: FindingRow, place: Place | None = None) -> list[str]:
        """The row's cells; `place` is where cause-first puts it once every check is settled
        (until then, by what needs a person, severity and outcome)."""
        outcome = str(row.outcome)
        notes = [self._note(row)]
        if place is not None and place.blocks:
            notes.append(f"cause of {place.blocks} blocked below")
        shown = (
            f'<span class="outcome {escape(outcome)}">'
            f"{escape(present.word(outcome).capitalize())}</span>"
            + "".join(f'<span class="note">{escape(note)}</span>' for note in notes if note)
        )
        if place is not None and place.depth:
            margin = f"{place.depth:g}em"
            shown = f'<span class="opsbook-under" style="margin-left: {margin}">{shown}</span>'
        key = place.key if place is not None else present.sort_key(outcome, row.severity)
        return [
            _cell("outcome", _hidden_key(str(present.outcome_rank(outcome))) + shown),
            _cell("check", escape(row.check_id)),
            _cell("severity", _hidden_key(key) + escape(row.severity)),
            _cell("target", escape(row.target or row.deployment or "")),
            _cell("title", escape(row.title)),
            _cell("observed", escape(present.shown(row.observed, row.unit))),
            _cell("expected", escape(present.expected_shown(row.expected, row.unit))),
        ]

    def _note(self, row: FindingRow) -> str:
        """The line under the outcome: who waived it until when, what blocked it, why not
        applicable, which fix fixed it."""
        outcome = row.outcome
        if outcome == Outcome.WAIVED:
            waiver = self._waiver(row)
            return f"{waiver.owner}, until {waiver.expires}" if waiver else (row.waiver or "")
        if row.waiver and row.waiver.startswith("expired:"):
            waiver = self._waiver(row)
            return f"waiver expired on {waiver.expires}" if waiver else "waiver expired"
        if outcome == Outcome.BLOCKED:
            cause = row.blocked_by
            return f"by {present.text(cause)}" if cause else present.text(row.message)
        if outcome == Outcome.FIXED and row.remediation:
            return f"by {row.remediation.rsplit('.', 1)[-1]}"
        if outcome in (Outcome.NOT_APPLICABLE, Outcome.NOT_EVALUATED):
            return present.text(row.message)
        return ""

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_table_html(
        self, report: pytest.TestReport | pytest.CollectReport, data: list[str]
    ) -> None:
        # A skip's longrepr is a (path, line, message) tuple, which pytest-html shows as is.
        if report.skipped and isinstance(report.longrepr, tuple) and data:
            reason = str(report.longrepr[2]).removeprefix("Skipped: ")
            data[0] = escape(reason) + "\n"

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Why, the risk, the waiver and the linked fix, below the row (pytest-html's HTML
        extras, read from the reports when the check's teardown is logged)."""
        if report.when != "teardown":
            return
        row = self._row(report)
        if row is None:
            return
        details = self._details(row)
        if details:
            from pytest_html import extras

            # pytest-html's documented channel (it reads `report.extras`), not a TestReport field.
            setattr(report, "extras", [*getattr(report, "extras", []), extras.html(details)])  # noqa: B010

    def _details(self, row: FindingRow) -> str:
        lines: list[tuple[str, str]] = []
        if row.outcome != Outcome.PASSED and row.message:
            lines.append(("Why", present.text(row.message)))
        blocked_by = row.blocked_by
        if blocked_by:
            lines.append(("Blocked by", present.text(blocked_by)))
        if row.risk:
            lines.append(("Risk", present.text(row.risk)))
        if row.waiver:
            waiver = self._waiver(row)
            state = "expired, so the failure counts" if row.waiver.startswith("expired:") else ""
            shown = (
                f"owner {waiver.owner}, ticket {waiver.ticket}, expires {waiver.expires}, "
                f"reason: {waiver.reason}"
                if waiver
                else row.waiver
            )
            lines.append(("Waiver", f"{shown}{f' ({state})' if state else ''}"))
        html = [f"<p><b>{escape(label)}:</b> {escape(value)}</p>" for label, value in lines]
        if row.remediation:
            html.append(self._fix_html(row))
        if not html:
            return ""
        return f'<div class="opsbook-details">{"".join(html)}</div>'

    def _fix_html(self, row: FindingRow) -> str:
        assert row.remediation is not None
        what = fix_summary(row.remediation)
        parts = [f"<b>Fix:</b> <code>{escape(row.remediation)}</code>"]
        if what:
            parts.append(f" ({escape(what)})")
        attempt = row.remediation_attempt
        if attempt is None:
            if row.outcome == Outcome.FAILED:
                target = f" --target {row.target}" if row.target else ""
                command = f"python -m opsbook remediate latest --check {row.check_id}{target}"
                parts.append(f"; not tried in this run: <code>{escape(command)}</code> plans it")
            html = f"<p>{''.join(parts)}</p>"
        else:
            done = attempt.verdict or attempt.status
            reason = f": {attempt.reason}" if attempt.reason else ""
            parts.append(f"; {escape(done)}{escape(reason)}")
            if attempt.before and attempt.verdict:
                parts.append(f"; before: {escape(attempt.before)}")
            if attempt.after and attempt.verdict:
                parts.append(f"; after: {escape(attempt.after)}")
            html = f"<p>{''.join(parts)}</p>"
            if attempt.plan:
                html += f"<pre>{escape(chr(10).join(attempt.plan))}</pre>"
        return html

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_summary(
        self, prefix: list[str], summary: list[str], postfix: list[str], session: pytest.Session
    ) -> None:
        from opsbook.plugin.reports import RUN

        findings = self.config.stash[FINDINGS]
        run = self.config.stash.get(RUN, None)
        self._redraw_settled_rows()
        self._place_rows()
        prefix.append(f"<style>{present.STYLE}{LAYOUT}</style>")
        gaps = self.config.stash.get(AUDIT_TRAIL_GAPS, [])
        judged = present.verdict(findings.counts(), len(gaps))
        prefix.append(
            f'<div class="opsbook-verdict {judged.kind}" id="opsbook-verdict">'
            f'<span class="headline">{escape(judged.headline)}</span>'
            f'<span class="counts">{escape(judged.counts)}</span></div>'
        )
        if gaps:
            items = "".join(f"<li>{escape(line)}</li>" for line in gaps)
            prefix.append(f"<p>Not in the audit trail:</p><ul>{items}</ul>")
        prefix.append(self._provenance(run))
        if findings.rows:
            postfix.extend(self._audit_summary(run))
            if run is not None:
                postfix.extend(_changes_html(self.config, run))

    def _redraw_settled_rows(self) -> None:
        """Draw again the rows whose outcome was settled after pytest-html drew them: once every
        check ran, a failure is found blocked by its cause, a blocked check checked again
        passes (opsbook.plugin.dependencies). Their cells, sort keys, Result and counts, and
        details, in pytest-html's data as its title hook handed it over."""
        data = getattr(self.report_data, "data", None)
        counts = getattr(self.report_data, "outcomes", None)
        if not isinstance(data, dict) or counts is None:
            return
        rows = self.config.stash[FINDINGS].rows
        for nodeid, drawn in self.drawn.items():
            row = rows.get(nodeid)
            if row is None or row.outcome == drawn:
                continue
            for test in data.get("tests", {}).get(nodeid, []):
                self._redraw(test, row, counts)
            self.drawn[nodeid] = row.outcome

    def _place_rows(self) -> None:
        """Put every check's row where cause-first reads it, now that every outcome is
        settled: its sort key, its depth under its cause, and a cause's count of what it
        blocks."""
        data = getattr(self.report_data, "data", None)
        counts = getattr(self.report_data, "outcomes", None)
        if not isinstance(data, dict) or counts is None:
            return
        rows = list(self.config.stash[FINDINGS].rows.values())
        found = [{"outcome": str(r.outcome), "severity": r.severity, "deployment": r.deployment,
                  "blocked_by": r.blocked_by, "services": r.services} for r in rows]  # fmt: skip
        order = present.cause_first(found)
        below: dict[int, int] = {}
        stack: list[int] = []
        for index, depth in order:
            del stack[depth:]
            for above in stack:
                below[above] = below.get(above, 0) + 1
            stack.append(index)
        for position, (index, depth) in enumerate(order):
            row = rows[index]
            attention = 0 if present.needs_a_person(str(row.outcome)) else 1
            place = Place(f"{attention}{position:05d}", depth, below.get(index, 0))
            for test in data.get("tests", {}).get(row.nodeid, []):
                self._redraw(test, row, counts, place)

    def _redraw(
        self,
        test: dict[str, Any],
        row: FindingRow,
        counts: dict[str, Any],
        place: Place | None = None,
    ) -> None:
        from pytest_html import extras

        cells = test.get("resultsTableRow")
        if not isinstance(cells, list) or len(cells) < 1 + len(COLUMNS):
            return
        fresh = self._cells(row, place)
        cells[1 : 1 + len(COLUMNS)] = fresh
        for (column, _, sortable), cell in zip(COLUMNS, fresh, strict=True):
            if sortable:
                test[column] = _inner(cell)
        result, old = RESULTS.get(row.outcome), str(test.get("result", ""))
        if result and result != old and result.lower() in counts and old.lower() in counts:
            cells[0] = f'<td class="col-result">{result}</td>'
            test["result"] = result
            counts[old.lower()]["value"] -= 1
            counts[result.lower()]["value"] += 1
        details = self._details(row)
        kept = [extra for extra in test.get("extras", []) if not _is_ours(extra)]
        test["extras"] = [*kept, extras.html(details)] if details else kept

    def _scope(self) -> dict[str, str]:
        from opsbook.plugin.inventory_option import chosen_inventory_path

        inventory = self.config.stash.get(INVENTORY, None)
        path = chosen_inventory_path(self.config)
        digest = file_sha256(path) if path is not None else None
        where = str(path.resolve()) if path is not None else "(none)"
        return {
            "Selection": f"-m {self.config.option.markexpr}"
            if self.config.option.markexpr
            else "all checks",
            "Inventory": f"{where} (SHA-256 {digest})" if digest else where,
            "Deployment": inventory.name if inventory is not None else "(none)",
        }

    def _provenance(self, run: Run | None) -> str:
        from opsbook import version

        facts = {
            "opsbook": f"{version.version()}, commit {version.commit()}",
            **self._scope(),
            "Operator": operator(),
        }
        if run is not None:
            finished = datetime.now(UTC)
            facts["Run"] = run.run_id
            facts["Started"] = run.started.isoformat(timespec="seconds")
            facts["Finished"] = (
                f"{finished.isoformat(timespec='seconds')} "
                f"({(finished - run.started).total_seconds():.1f} s)"
            )
        return _facts(facts, "opsbook-provenance")

    def _audit_summary(self, run: Run | None) -> list[str]:
        rows = list(self.config.stash[FINDINGS].rows.values())
        targets = {(r.target_kind, r.target) for r in rows if r.target}
        scope = {
            **self._scope(),
            "Checked": f"{len({r.check_id for r in rows})} checks on {len(targets)} targets, "
            f"{len(rows)} results",
        }
        html = ['<section id="opsbook-audit"><h2>Audit summary</h2>', _facts(scope, "")]
        html.append("<h3>Counts by area</h3>")
        html.append(
            _counts_table(
                "area", rows, lambda r: present.area_of(r.markers, r.check_id), sorted_by=None
            )
        )
        html.append("<h3>Counts by severity</h3>")
        html.append(_counts_table("severity", rows, lambda r: r.severity, sorted_by=_severity))
        html.extend(self._waivers_html(rows))
        html.extend(_fixes_html(rows, run, self.config.stash.get(INVENTORY, None)))
        html.append("</section>")
        return html

    def _waivers_html(self, rows: list[FindingRow]) -> list[str]:
        waived = [r for r in rows if r.waiver]
        body = []
        for row in waived:
            waiver = self._waiver(row)
            expired = row.waiver is not None and row.waiver.startswith("expired:")
            state = "expired: the failure counts" if expired else "in force"
            cells = (
                [waiver.owner, waiver.ticket, str(waiver.expires), waiver.reason]
                if waiver
                else [row.waiver or "", "", "", ""]
            )
            body.append(
                _tr([row.check_id, row.target or "-", *cells, state, present.word(row.outcome)])
            )
        head = _tr(
            ["check", "target", "owner", "ticket", "expires", "reason", "waiver", "outcome"],
            "th",
        )
        if not body:
            return ["<h3>Waivers applied (0)</h3><p>No check was waived in this run.</p>"]
        return [
            f"<h3>Waivers applied ({len(body)})</h3>",
            f'<table class="opsbook-table" id="opsbook-waivers">{head}{"".join(body)}</table>',
        ]


class Place(NamedTuple):
    """Where cause-first puts a row: its sort key, how deep under its cause, and how many rows
    sit under it (what it blocks)."""

    key: str
    depth: int
    blocks: int


def _inner(cell: str) -> str:
    """A cell's inner HTML, as pytest-html reads a sortable column's value."""
    found = re.search(r"<td.*?>(.*?)</td>", cell)
    return found.group(1) if found else ""


def _is_ours(extra: object) -> bool:
    return isinstance(extra, dict) and 'class="opsbook-details"' in str(extra.get("content"))


def _severity(name: str) -> int:
    return -present.severity_of(name)


def _facts(facts: dict[str, str], element_id: str) -> str:
    items = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in facts.items())
    where = f' id="{element_id}"' if element_id else ""
    return f'<dl class="opsbook-facts"{where}>{items}</dl>'


def _tr(cells: list[str], tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag}>{escape(c)}</{tag}>" for c in cells) + "</tr>"


def _counts_table(what: str, rows: list[FindingRow], group: Any, sorted_by: Any) -> str:
    groups: dict[str, list[FindingRow]] = {}
    for row in rows:
        groups.setdefault(str(group(row)), []).append(row)
    outcomes = [o for o in present.WORST_FIRST if any(r.outcome == o for r in rows)]
    head = _tr([what, *(present.WORDS[o] for o in outcomes)], "th")
    body = "".join(
        _tr([name, *(str(sum(r.outcome == o for r in mine)) for o in outcomes)])
        for name, mine in sorted(groups.items(), key=lambda item: (sorted_by or str)(item[0]))
    )
    return f'<table class="opsbook-table">{head}{body}</table>'


def _fixes_html(rows: list[FindingRow], run: Run | None, inventory: Inventory | None) -> list[str]:
    """The fixes this run applied (or tried), each with its audit-log entry (the outcome's)."""
    from opsbook.remediate.audit import AuditLog
    from opsbook.remediate.runner import AUDIT, state_dir

    tried = [
        r
        for r in rows
        if r.remediation_attempt is not None
        and r.remediation_attempt.status in ("applied", "failed", "refused")
    ]
    if not tried:
        return ["<h3>Fixes applied (0)</h3><p>No fix was applied in this run.</p>"]
    entries: dict[tuple[str, str], dict[str, Any]] = {}
    problem = ""
    if run is not None and inventory is not None:
        try:
            for entry in AuditLog(state_dir(inventory) / AUDIT).entries():
                if entry.get("run") == run.run_id and entry.get("event") == "outcome":
                    target = str(entry.get("target", "")).split("/", 1)[-1]
                    entries[(str(entry.get("check")), target)] = entry
        except (OSError, ValueError) as exc:
            problem = f"the audit log cannot be read: {exc}"
    body = []
    for row in tried:
        attempt = row.remediation_attempt
        assert attempt is not None
        found = entries.get((row.check_id, row.target or ""))
        logged = (
            f"#{found['seq']} ({str(found.get('mac', ''))[:12]})"
            if found
            else problem or "NOT in the audit log"
        )
        body.append(
            _tr(
                [
                    row.check_id,
                    row.target or "-",
                    row.remediation or "",
                    attempt.status,
                    attempt.verdict or "",
                    present.word(row.outcome),
                    logged,
                ]
            )
        )
    head = _tr(["check", "target", "fix", "status", "verdict", "outcome", "audit log entry"], "th")
    return [
        f"<h3>Fixes applied ({len(body)})</h3>",
        f'<table class="opsbook-table" id="opsbook-fixes">{head}{"".join(body)}</table>',
    ]


def _changes_listing(title: str, keys: list[tuple[str, str | None]]) -> str:
    items = "".join(f"<li>{escape(c)}[{escape(t or '-')}]</li>" for c, t in keys)
    return f"<h3>{escape(title)} ({len(keys)})</h3><ul>{items}</ul>"


def _changes_html(config: pytest.Config, run: Run) -> list[str]:
    from opsbook.plugin.reports import changes_since

    changes = changes_since(config, run)
    if changes.previous_run is None:
        return ["<p>No earlier run of this selection to compare with.</p>"]
    html = [f"<h2>Since run {escape(changes.previous_run)}</h2>"]
    html.append(_changes_listing("Newly failing", changes.newly_failing))
    html.append(_changes_listing("Recovered", changes.recovered))
    html.append(_changes_listing("Flapping", changes.flapping))
    varying = {key: values for key, values in changes.trends.items() if len(set(values)) > 1}
    if varying:
        lines = "".join(
            f"<tr><td>{escape(c)}[{escape(t or '-')}]</td><td>{values[-1]:g}</td>"
            f"<td>{sparkline(values)}</td></tr>"
            for (c, t), values in sorted(varying.items(), key=lambda item: str(item[0]))
        )
        html.append(
            "<h3>Trends of measured values</h3>"
            f'<table class="opsbook-table"><tr><th>check</th><th>now</th><th>runs</th></tr>'
            f"{lines}</table>"
        )
    return html
