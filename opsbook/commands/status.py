"""`python -m opsbook status [--reports-dir DIR]`: the runbook's health dashboard, in the terminal.

Read from the last finished run (DIR/latest/findings.json), nothing is probed again:

    service status    up or down per target, from the readiness checks (CONTAINED, with who
                      and when, for an entry `opsbook incident contain` closed)
    resource use      disk, memory, Redis memory, database connections (observed vs limit),
                      and each container's CPU and memory against its limits (compose)
    recent activity   queue depth, messages stored in the window, dead letters, draining
    recent errors     every failed check, or one that could not be evaluated, with its message,
                      cause first: the checks blocked by a dependency that is down right under
                      the line of their cause, the causes by the worst severity they block
    quick actions     the remediate command of each failed check that has a linked fix (not of a
                      blocked check: its cause is fixed first; not of one that could not be
                      evaluated: nothing is known to be wrong with it)

Values are printed with their units (`93.5 %`, `12 MiB`). The first line says the state, and the
exit code is the Nagios plugin's, so that the command drops into existing monitoring (NRPE,
Icinga, a Nagios check_command):

    0 OK        no check failed, could not be evaluated or was blocked by a dependency
                (passed, fixed, waived and not applicable are fine)
    1 WARNING   some did, none of them of severity high or critical
    2 CRITICAL  a check of severity high or critical failed or could not be evaluated (an
                unreachable database is as bad as a failing one)
    3 UNKNOWN   no finished run under the reports directory, or its findings.json cannot be read
"""

from __future__ import annotations

import argparse
import enum
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opsbook.check import Severity
from opsbook.locations import reports_dir
from opsbook.outcome import Unit
from opsbook.pages import present


class State(enum.IntEnum):
    """The Nagios plugin states, as exit codes."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


# A problem of this severity or a higher one is CRITICAL; of a lower one, WARNING.
CRITICAL_FROM = Severity.HIGH

# (check id, what the line is about); a check run per target gives one line per target.
SERVICES = (
    ("HEALTH-001", "http"),
    ("DB-001", "postgres"),
    ("QUEUE-001", "redis"),
    ("OBS-001", "prometheus"),
    ("OBS-003", "grafana"),
)
RESOURCES = (
    ("RES-001", "disk used"),
    ("RES-002", "memory used"),
    ("QUEUE-002", "redis memory"),
    ("DB-002", "db connections"),
)
ACTIVITY = (
    ("QUEUE-003", "queue depth"),
    ("QUEUE-007", "stored in window"),
    ("QUEUE-006", "draining"),
    ("QUEUE-004", "dead letters"),
)
# Outcomes that need a person (opsbook.outcome.Outcome.bad).
PROBLEMS = ("failed", "error", "blocked")


def register(commands: Any) -> None:
    parser = commands.add_parser("status", help="the health dashboard of the last run")
    parser.set_defaults(run=run)
    parser.add_argument("--reports-dir", type=Path, default=reports_dir())
    parser.add_argument(
        "--html",
        type=Path,
        metavar="FILE",
        help="also write the status page (opsbook.pages.status_page) to FILE; with no run to "
        "read, a page that says UNKNOWN and why",
    )


def _text(value: object) -> str:
    return present.text(value)


def _shown(value: object, unit: str | None = None) -> str:
    """A typed value as a person reads it (as the HTML pages show it), `-` for none."""
    return present.shown(value, unit) or "-"


def _value(row: dict[str, Any]) -> str:
    """The row's observed value with its unit."""
    return _shown(row.get("observed"), row.get("unit"))


def _typed(row: dict[str, Any]) -> dict[str, Any]:
    """A row of a run before schema_version 1, whose values were strings (structures as JSON
    inside the string), with its value decoded."""
    observed = row.get("observed")
    if not isinstance(observed, str):
        return row
    try:
        return {**row, "observed": json.loads(observed)}
    except ValueError:
        return row


def state(findings: list[dict[str, Any]]) -> State:
    """OK without problems; CRITICAL when a problem's severity is high or above (or unknown),
    else WARNING."""
    problems = [row for row in findings if row["outcome"] in PROBLEMS]
    if not problems:
        return State.OK
    severities = Severity.__members__
    worst = max(severities.get(str(r.get("severity")).upper(), Severity.CRITICAL) for r in problems)
    return State.CRITICAL if worst >= CRITICAL_FROM else State.WARNING


def _expected(row: dict[str, Any]) -> str:
    """`<= 80 %`: a bare limit gets the observed value's unit."""
    expected = _text(row.get("expected") or "")
    unit = row.get("unit")
    if expected[-1:].isdigit() and unit and unit != Unit.COUNT:
        expected = f"{expected} {unit}"
    return expected


def _rows(findings: list[dict[str, Any]], check_id: str) -> list[dict[str, Any]]:
    return [row for row in findings if row["check_id"] == check_id]


def _where(row: dict[str, Any]) -> str:
    return row["target"] or "-"


STATES = {"passed": "UP", "fixed": "UP (fixed)", "failed": "DOWN", "error": "UNKNOWN"}


def _state(row: dict[str, Any]) -> str:
    outcome = str(row["outcome"])
    return STATES.get(outcome, outcome)


# The reason of a check not applicable because an incident's containment closed its service
# (opsbook incident contain): closed on purpose, and a person must see by whom.
CONTAINED = "contained by opsbook at "


def _service_lines(findings: list[dict[str, Any]]) -> list[str]:
    lines = []
    for check_id, kind in SERVICES:
        for row in _rows(findings, check_id):
            contained = str(row["message"] or "").startswith(CONTAINED)
            if row["outcome"] == "skipped" and not contained:
                continue  # no such target in the inventory (Grafana in the sandbox), or waived
            detail = _text(row["message"]) if row["outcome"] != "passed" else _value(row)
            shown = "CONTAINED" if contained else _state(row)
            lines.append(f"  {kind:<10} {_where(row):<12} {shown:<11} {check_id}: {detail}")
    return lines


# The compose check whose observation is each container's CPU and memory use and limits.
CONTAINER_USE = "COMPOSE-004"


def _container_lines(findings: list[dict[str, Any]]) -> list[str]:
    """One line per container measured by COMPOSE-004: its memory and CPU against its limits."""
    from opsbook.probes.containers import size

    lines = []
    for row in _rows(findings, CONTAINER_USE):
        observed = row.get("observed")
        if row["outcome"] == "skipped" or not isinstance(observed, dict):
            continue
        flag = "  <- " + row["outcome"].upper() if row["outcome"] in PROBLEMS else ""
        for name, seen in sorted(observed.items()):
            if not isinstance(seen, dict):
                continue
            memory, limit = (
                size(int(value)) if isinstance(value, int | float) else "-"
                for value in (seen.get("memory_bytes"), seen.get("memory_limit_bytes"))
            )
            cpus_used = seen.get("cpus_used")
            cpus = f"{cpus_used:.2f}" if isinstance(cpus_used, int | float) else "-"
            cpus_limit = _shown(seen.get("cpus_limit"))
            used = f"memory {memory} of {limit}, CPU {cpus} of {cpus_limit}"
            lines.append(f"  {'container':<17} {_text(name):<12} {used}{flag}")
    return lines


def _measure_lines(
    findings: list[dict[str, Any]], wanted: tuple[tuple[str, str], ...]
) -> list[str]:
    lines = []
    for check_id, label in wanted:
        for row in _rows(findings, check_id):
            if row["outcome"] == "skipped":
                continue
            limit = f" (expected {_expected(row)})" if row["expected"] else ""
            flag = "  <- " + row["outcome"].upper() if row["outcome"] in PROBLEMS else ""
            lines.append(f"  {label:<17} {_where(row):<12} {_value(row)}{limit}{flag}")
    return lines


def _error_line(row: dict[str, Any], indent: str = "  ") -> str:
    return (
        f"{indent}[{row['severity'].upper()}] {row['check_id']} {_where(row)}: "
        f"{_text(row['message']) or row['outcome']}"
    )


def _error_lines(problems: list[dict[str, Any]]) -> list[str]:
    """Every problem cause first (present.cause_first): under a cause's line, the checks it
    blocks, indented after a line that says so: what to fix first, and what waits for it."""
    lines: list[str] = []
    for index, depth in present.cause_first(problems):
        row = problems[index]
        indent = "  " * (depth + 1)
        if depth and lines[-1].startswith(indent[:-2] + "["):
            # The first row under this cause.
            cause = _text(row.get("blocked_by") or "a dependency")
            lines.append(f"{indent[:-2]}blocked by {cause} (fix it first):")
        lines.append(_error_line(row, indent))
    return lines


def _action_lines(problems: list[dict[str, Any]], reports: Path) -> list[str]:
    where = "" if reports == reports_dir() else f" --reports-dir {reports}"
    lines = []
    for row in problems:
        if not row.get("remediation") or row["outcome"] != "failed":
            continue
        target = f" --target {row['target']}" if row["target"] else ""
        command = f"python -m opsbook remediate latest --check {row['check_id']}{target}{where}"
        lines.append(f"  {command}")
        lines.append(f"      {row['remediation']} (add --apply to carry out the plan)")
    return lines


def _age(finished: str) -> str:
    try:
        seconds = (datetime.now(UTC) - datetime.fromisoformat(finished)).total_seconds()
    except ValueError:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def render(document: dict[str, Any], reports: Path) -> str:
    """The dashboard of one findings.json document."""
    summary, findings = document["run"], document["findings"]
    if "schema_version" not in document:
        findings = [_typed(row) for row in findings]
    counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(summary["counts"].items()))
    problems = [row for row in findings if row["outcome"] in PROBLEMS]
    sections = [
        ("SERVICE STATUS", _service_lines(findings)),
        ("RESOURCE USE", _measure_lines(findings, RESOURCES) + _container_lines(findings)),
        ("RECENT ACTIVITY", _measure_lines(findings, ACTIVITY)),
        ("RECENT ERRORS", _error_lines(problems)),
        ("QUICK ACTIONS", _action_lines(problems, reports)),
    ]
    out = [
        f"opsbook status: {state(findings).name} - {_text(summary.get('inventory') or '?')}, "
        f"run {summary['run_id']} "
        f"finished {summary['finished']} ({_age(summary['finished'])})",
        f"  {counts or 'no checks'}; selection: {_text(summary.get('selection') or 'all')}",
    ]
    for title, lines in sections:
        out.append("")
        out.append(title)
        out.extend(
            lines
            or [
                "  (none)" if title in ("RECENT ERRORS", "QUICK ACTIONS") else "  (not in this run)"
            ]
        )
    return "\n".join(out) + "\n"


def run(args: argparse.Namespace) -> int:
    from opsbook.findings_file import FindingsUnreadable, read_findings
    from opsbook.pages import status_page

    latest = args.reports_dir / "latest" / "findings.json"
    if not latest.exists():
        return _unknown(f"no finished run under {args.reports_dir} (no {latest})", args.html)
    try:
        document = read_findings(latest)
    except FindingsUnreadable as exc:
        return _unknown(str(exc), args.html)
    sys.stdout.write(render(document, args.reports_dir))
    if args.html is not None and not _write_page(args.html, status_page.render(document)):
        return State.UNKNOWN
    return state(document["findings"])


def _write_page(path: Path, page: str) -> bool:
    """Write the status page whole (renamed into place, readable by the owner and the group
    only, like every report); say why not in one line."""
    from opsbook.report_files import FILE_MODE

    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_text(page, encoding="utf-8")
        temporary.chmod(FILE_MODE)
        temporary.replace(path)
    except OSError as exc:
        print(f"status: cannot write the page {path}: {exc.strerror or exc}", file=sys.stderr)
        return False
    return True


def _unknown(reason: str, page: Path | None = None) -> int:
    # Monitoring reads the first line of stdout (NRPE drops stderr); a person, and every other
    # opsbook command, says what is wrong in one line on stderr.
    print(f"opsbook status: {State.UNKNOWN.name} - {_text(reason)}")
    print(f"status: {reason}", file=sys.stderr)
    if page is not None:
        from opsbook.pages import status_page

        _write_page(page, status_page.render_unknown(reason))
    return State.UNKNOWN
