"""The status page across runs: reports/status.html, rewritten after every run.

The page of the newest run (opsbook.pages.status_page), in which each area and each target
shows its state now beside a strip of the last runs of the same selection (one coloured cell
per run, oldest left, newest right, the run's time as the cell's title, a link to its report),
followed by the trends of the measured values (inline SVG) and the list of the runs with links
to their reports.

Rendered from findings.json documents alone, with the names of their folders under the reports
folder: every link is relative to that folder (`<run folder>/report.html`), so the page works
from the file system and from any static web server that serves the reports folder. No script,
no external file; on a phone each row is a card, printed the colours keep.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from opsbook.history import KeptRun, sparkline
from opsbook.pages import present, status_page

Row = dict[str, Any]
PAGE_NAME = "status.html"
CELL_KINDS = {"passed", "fixed", "failed", "error", "blocked", "waived", "skipped", "none"}
# What a run folder holds, in the order the runs' list links them: a run's own report, a
# merged fleet's summary, the run's own status page, its findings.
REPORTS = (
    ("report.html", "report"),
    ("summary.html", "summary"),
    ("status.html", "status page"),
    ("findings.json", "findings.json"),
)

STYLE = """
<style>
.strip { display: flex; flex-wrap: wrap; gap: 2px; }
.strip a, .strip span { display: block; width: 10px; height: 18px; border-radius: 2px;
  box-sizing: border-box; border: 1px solid rgba(0,0,0,.2); text-decoration: none;
  -webkit-print-color-adjust: exact; print-color-adjust: exact; }
.cell-passed, .cell-fixed { background: #1e7e34; }
.cell-failed { background: #b02a37; }
.cell-error, .cell-blocked { background: #d08700; }
.cell-waived { background: #e0c04a; }
.cell-skipped { background: #9aa0a6; }
.cell-none { background: #fff; border-style: dashed; }
.legend { font-size: 12px; color: #444; margin: 0 0 8px; }
.legend .item { white-space: nowrap; }
.legend .strip { display: inline-flex; vertical-align: middle; margin: 0 2px 0 8px; }
.spark svg { display: block; max-width: 100%; height: auto; }
@media (max-width: 600px) {
  table.runs-cards, table.runs-cards tbody, table.runs-cards tr,
  table.runs-cards td { display: block; }
  table.runs-cards tr.head { display: none; }
  table.runs-cards tr { border-top: 2px solid #ccc; padding: 4px 0; }
  table.runs-cards td { border: none; padding: 1px 4px; }
  table.runs-cards td[data-label]::before { content: attr(data-label) ": "; font-weight: bold; }
}
</style>
"""

LEGEND = (
    '<p class="legend">Each cell is one run, the oldest left, the newest right; its title says '
    "when it ran, and it links to its report."
    + "".join(
        f'<span class="item"><span class="strip"><span class="cell-{kind}"></span></span>'
        f"{escape(label)}</span>"
        for kind, label in (
            ("passed", "passed"),
            ("failed", "failed"),
            ("error", "could not evaluate or blocked"),
            ("waived", "waived"),
            ("skipped", "not applicable"),
            ("none", "not checked in that run"),
        )
    )
    + "</p>"
)


def when(document: dict[str, Any]) -> str:
    """The time a run started, as a person reads it: `2026-12-01 13:15:37 UTC`."""
    started = str((document.get("run") or {}).get("started") or "")
    try:
        moment = datetime.fromisoformat(started)
    except ValueError:
        return present.text(started) or "?"
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def _href(folder: str, name: str) -> str:
    return escape(f"{quote(folder)}/{quote(name)}")


def _report_of(kept: KeptRun, present_files: Callable[[KeptRun], Sequence[str]]) -> str | None:
    """The page a strip cell links to: the run's report, else what else it has."""
    files = present_files(kept)
    return next((name for name, _ in REPORTS if name in files), None)


def state(rows: list[Row]) -> str | None:
    """A group's outcome in one run: the worst of its checks that apply (a check that does not
    apply to a healthy service does not make it grey); not applicable when none applies; None
    when the run did not check it."""
    if not rows:
        return None
    applying = [row for row in rows if row["outcome"] != "skipped"]
    return str(status_page._worst(applying or rows)["outcome"])


def _cell(kept: KeptRun, rows: list[Row], link: str | None) -> str:
    found = state(rows)
    outcome, said = (found, present.word(found)) if found else ("none", "not checked")
    # An outcome this version does not know is shown as a failure: never hidden as green.
    kind = outcome if outcome in CELL_KINDS else "failed"
    title = escape(f"{when(kept.document)}: {said}")
    if link is None:
        return f'<span class="cell-{kind}" title="{title}" data-outcome="{escape(outcome)}"></span>'
    return (
        f'<a class="cell-{kind}" title="{title}" aria-label="{title}" '
        f'data-outcome="{escape(outcome)}" href="{_href(kept.folder, link)}"></a>'
    )


def _groups_table(
    name: str,
    element_id: str,
    runs: Sequence[KeptRun],
    key: Callable[[Row], str],
    present_files: Callable[[KeptRun], Sequence[str]],
) -> str:
    by_run = []
    for kept in runs:
        groups: dict[str, list[Row]] = {}
        for row in kept.document.get("findings") or []:
            groups.setdefault(key(row), []).append(row)
        by_run.append(groups)
    newest = by_run[-1]
    # Worst first, as the page of one run orders them.
    ordered = sorted(newest, key=lambda g: (present.outcome_rank(state(newest[g]) or ""), g))
    # A group no longer in the newest run (a target taken out of the inventory) still shows
    # its past, after the others.
    gone = sorted({g for groups in by_run for g in groups} - set(ordered))
    links = [_report_of(kept, present_files) for kept in runs]
    body = []
    for group in [*ordered, *gone]:
        now = newest.get(group, [])
        found = state(now)
        shown = status_page._outcome(found) if found else "not checked"
        counts = present.verdict(status_page._count(now)).counts if now else ""
        strip = "".join(
            _cell(kept, groups.get(group, []), link)
            for kept, groups, link in zip(runs, by_run, links, strict=True)
        )
        cells = (
            (name, escape(group)),
            ("now", shown),
            ("checks", escape(counts)),
            (f"last {len(runs)} runs", f'<div class="strip">{strip}</div>'),
        )
        # data-label names the cell where a phone shows the row as a card.
        body.append(
            f'<tr data-group="{escape(group)}">'
            + "".join(f'<td data-label="{escape(label)}">{html}</td>' for label, html in cells)
            + "</tr>"
        )
    head = (
        f'<tr class="head"><th>{escape(name)}</th><th>now</th><th>checks</th>'
        f"<th>last {len(runs)} runs</th></tr>"
    )
    return (
        f'<table class="opsbook-table runs-cards" id="{element_id}">{head}{"".join(body)}</table>'
    )


def _number(value: object) -> float | None:
    # A measured value is a number in findings.json; a bool is a yes/no, not a measurement.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if value == value else None


def _trends(runs: Sequence[KeptRun], several: bool) -> str:
    """Each check and target with a measured value (a number with its unit: not a status code
    or a yes/no) in at least two of the runs."""
    series: dict[tuple[str, str], list[tuple[float, str | None]]] = {}
    for kept in runs:
        for row in kept.document.get("findings") or []:
            number = _number(row.get("observed"))
            if number is not None and row.get("unit"):
                key = (str(row["check_id"]), status_page._target(row, several))
                series.setdefault(key, []).append((number, row.get("unit")))
    shown = {key: points for key, points in series.items() if len(points) >= 2}
    if not shown:
        return "<h2>Trends</h2><p>No value was measured in two of these runs yet.</p>"
    body = []
    for (check_id, target), points in sorted(shown.items()):
        values = [value for value, _ in points]
        unit = points[-1][1]
        cells = (
            ("check", escape(check_id)),
            ("target", escape(target)),
            ("now", escape(present.shown(values[-1], unit))),
            (
                "range",
                escape(f"{present.shown(min(values), unit)} to {present.shown(max(values), unit)}"),
            ),
            ("runs", f'<span class="spark">{sparkline(values)}</span>'),
        )
        body.append(
            "<tr>"
            + "".join(f'<td data-label="{label}">{html}</td>' for label, html in cells)
            + "</tr>"
        )
    head = "".join(f"<th>{label}</th>" for label in ("check", "target", "now", "range", "runs"))
    return (
        f"<h2>Trends ({len(body)})</h2>"
        '<p class="legend">Measured values over the runs that measured them, oldest left.</p>'
        f'<table class="opsbook-table runs-cards" id="trends"><tr class="head">{head}</tr>'
        f"{''.join(body)}</table>"
    )


def _runs_list(runs: Sequence[KeptRun], present_files: Callable[[KeptRun], Sequence[str]]) -> str:
    body = []
    for kept in reversed(runs):
        summary = kept.document.get("run") or {}
        rows = kept.document.get("findings") or []
        judged = present.verdict(summary.get("counts") or status_page._count(rows))
        files = present_files(kept)
        links = " ".join(
            f'<a href="{_href(kept.folder, name)}">{escape(label)}</a>'
            for name, label in REPORTS
            if name in files
        )
        cells = (
            ("started", escape(when(kept.document))),
            ("run", escape(present.text(summary.get("run_id") or kept.folder))),
            ("verdict", f"<b>{escape(judged.headline)}</b> {escape(judged.counts)}"),
            ("reports", links or "none kept"),
        )
        body.append(
            "<tr>"
            + "".join(f'<td data-label="{label}">{html}</td>' for label, html in cells)
            + "</tr>"
        )
    head = "".join(f"<th>{label}</th>" for label in ("started", "run", "verdict", "reports"))
    return (
        f"<h2>Runs ({len(runs)}), newest first</h2>"
        f'<table class="opsbook-table runs-cards" id="runs"><tr class="head">{head}</tr>'
        f"{''.join(body)}</table>"
    )


def render(
    runs: Sequence[KeptRun],
    present_files: Callable[[KeptRun], Sequence[str]] = lambda kept: ("report.html",),
) -> str:
    """The page of the runs (oldest first, the newest last, at least one); `present_files`
    names the files each run's folder holds (a run's report.html by default)."""
    if not runs:
        raise ValueError("the page across runs needs at least one run")
    current = runs[-1].document
    rows: list[Row] = list(current.get("findings") or [])
    several = len({r.get("deployment") for r in rows}) > 1
    groups = "\n".join(
        [
            STYLE,
            f"<h2>By area, over the last {len(runs)} runs</h2>",
            LEGEND,
            _groups_table("area", "areas", runs, status_page._area, present_files),
            f"<h2>By target, over the last {len(runs)} runs</h2>",
            _groups_table(
                "target", "targets", runs, lambda r: status_page._target(r, several), present_files
            ),
        ]
    )
    more = "\n".join([_trends(runs, several), _runs_list(runs, present_files)])
    return status_page.render(current, groups=groups, more=more)


def files_in(reports_dir: Path) -> Callable[[KeptRun], Sequence[str]]:
    """The report files each run's folder holds, read from the reports folder."""

    def present_files(kept: KeptRun) -> Sequence[str]:
        return [name for name, _ in REPORTS if (reports_dir / kept.folder / name).is_file()]

    return present_files


def write(reports_dir: Path, runs: Sequence[KeptRun], gid: int) -> Path:
    """reports/status.html for these runs, renamed into place (a reader never opens half a
    page; two runs ending at once each write their own temporary file), readable by the owner
    and the reports group only."""
    from opsbook.report_files import restrict

    page = reports_dir / PAGE_NAME
    temporary = reports_dir / f".{PAGE_NAME}.{runs[-1].folder}.tmp"
    try:
        temporary.write_text(render(runs, files_in(reports_dir)), encoding="utf-8")
        restrict(temporary, gid)
        os.replace(temporary, page)
    finally:
        temporary.unlink(missing_ok=True)
    return page
