"""What the HTML pages share: outcomes in opsbook's words, the order rows are read in, the verdict,
values with their units, and the style.

Everything here returns plain text; the pages escape it where they put it into HTML.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from opsbook.check import Severity
from opsbook.outcome import Outcome, Unit

# The outcomes as a person reads them (docs/contracts.md#outcomes), worst first: the order of
# the verdict's counts and, within a severity, of the rows.
WORDS: dict[Outcome, str] = {
    Outcome.FAILED: "failed",
    Outcome.NOT_EVALUATED: "could not evaluate",
    Outcome.BLOCKED: "blocked",
    Outcome.WAIVED: "waived",
    Outcome.FIXED: "fixed",
    Outcome.NOT_APPLICABLE: "not applicable",
    Outcome.PASSED: "passed",
}
WORST_FIRST = tuple(WORDS)


def word(outcome: str) -> str:
    """`could not evaluate` for "error"; an outcome this version does not know, as written."""
    try:
        return WORDS[Outcome(outcome)]
    except ValueError:
        return text(outcome)


def severity_of(name: object) -> Severity:
    """The severity called `name`; an unknown one counts as critical (never hidden below)."""
    return Severity.__members__.get(str(name).upper(), Severity.CRITICAL)


def outcome_rank(outcome: str) -> int:
    try:
        return WORST_FIRST.index(Outcome(outcome))
    except ValueError:
        return 0


def needs_a_person(outcome: str) -> bool:
    try:
        return Outcome(outcome).bad
    except ValueError:
        return True


def row_order(outcome: str, severity: object) -> tuple[int, int, int]:
    """How rows are read: what needs a person first (failed, could not evaluate, blocked), then
    by severity (critical first), then by outcome (worst first)."""
    return (0 if needs_a_person(outcome) else 1, -severity_of(severity), outcome_rank(outcome))


def sort_key(outcome: str, severity: object) -> str:
    """row_order as a string that sorts the same way (pytest-html compares strings)."""
    attention, minus_severity, rank = row_order(outcome, severity)
    return f"{attention}{minus_severity + 4}{rank}"


def cause_first(rows: Sequence[Mapping[str, Any]]) -> list[tuple[int, int]]:
    """The order rows are read in, with the cause first: (index in `rows`, depth) each.

    What needs a person comes first. A row blocked by a dependency (`blocked_by`, a service)
    comes right after its cause, one level deeper: the worst row of that service that needs a
    person (its `services`), itself placed as any other. The causes, and the problems that
    block nothing, are sorted by the worst severity they hold or block (a Redis failure that
    blocks a critical health check comes first), a cause before a lone problem of the same
    severity, then by row_order. A blocked row whose cause has no row of its own (an earlier
    findings.json, without `services`) stays where row_order puts it. The rest follow in
    row_order."""

    def order(index: int) -> tuple[int, int, int]:
        return row_order(rows[index]["outcome"], rows[index]["severity"])

    problems = sorted((i for i, r in enumerate(rows) if needs_a_person(r["outcome"])), key=order)
    # The row that stands for each service (of each deployment, in a run over several): its
    # worst unblocked problem, else its worst one.
    heads: dict[tuple[str, str], int] = {}
    for unblocked in (True, False):
        for index in problems:
            if bool(rows[index].get("blocked_by")) != unblocked:
                deployment = str(rows[index].get("deployment") or "")
                for service in rows[index].get("services") or ():
                    heads.setdefault((deployment, str(service)), index)
    parent: dict[int, int] = {}
    for index in problems:
        cause = str(rows[index].get("blocked_by") or "")
        head = heads.get((str(rows[index].get("deployment") or ""), cause))
        if head is None or head == index:
            continue
        # Never a cycle: a row does not go under a row that is (or is under) itself.
        above: int | None = head
        while above is not None and above != index:
            above = parent.get(above)
        if above is None:
            parent[index] = head
    children: dict[int, list[int]] = {}
    for index in problems:  # in row_order, so each cause's rows are too
        if index in parent:
            children.setdefault(parent[index], []).append(index)

    def worst(index: int) -> int:
        below = children.get(index, [])
        return max([severity_of(rows[index]["severity"]), *(worst(i) for i in below)])

    roots = sorted(
        (i for i in problems if i not in parent),
        key=lambda i: (-worst(i), 0 if i in children else 1, order(i)),
    )
    shown: list[tuple[int, int]] = []

    def walk(index: int, depth: int) -> None:
        shown.append((index, depth))
        for child in children.get(index, []):
            walk(child, depth + 1)

    for root in roots:
        walk(root, 0)
    fine = (i for i, row in enumerate(rows) if not needs_a_person(row["outcome"]))
    return shown + [(i, 0) for i in sorted(fine, key=order)]


class Verdict(NamedTuple):
    """The run's verdict: a CSS class, the headline, and the counts worst first."""

    kind: str  # passed, failed, not-evaluated, incomplete
    headline: str
    counts: str


def verdict(counts: Mapping[str, int], audit_trail_gaps: int = 0) -> Verdict:
    """The verdict the exit code gives (opsbook.plugin.outcomes.exit_code), in words."""
    shown = (
        "; ".join(f"{counts[o]} {WORDS[o]}" for o in WORST_FIRST if counts.get(o))
        or "no checks ran"
    )
    if counts.get(Outcome.FAILED):
        return Verdict("failed", "FAILED", shown)
    if audit_trail_gaps:
        return Verdict("incomplete", "AUDIT TRAIL INCOMPLETE", shown)
    if counts.get(Outcome.NOT_EVALUATED) or counts.get(Outcome.BLOCKED):
        return Verdict("not-evaluated", "COULD NOT EVALUATE", shown)
    if not counts:
        return Verdict("not-evaluated", "NO CHECKS", shown)
    return Verdict("passed", "PASSED", shown)


def text(value: object) -> str:
    """One printable line: a finding can hold anything a target answered (escape sequences)."""
    line = " ".join(str(value).split())
    if line.isprintable():
        return line  # the common case, without a look at each character
    return "".join(ch if unicodedata.category(ch)[0] != "C" else "?" for ch in line)


def shown(value: object, unit: str | None = None) -> str:
    """A typed value as a person reads it: `93.5 %`, `yes`, `a, b`, `path=/srv/.env, mode=0644`."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        if unit in set(Unit):
            return Unit(unit).show(value)
        number = f"{value:g}" if isinstance(value, float) else str(value)
        return f"{number} {text(unit)}" if unit else number
    if isinstance(value, list):
        return ", ".join(shown(item) for item in value) or "none"
    if isinstance(value, dict):
        return ", ".join(f"{text(k)}={shown(v)}" for k, v in value.items())
    return text(value)


def expected_shown(expected: object, unit: str | None) -> str:
    """`<= 80 %`: a bare limit gets the observed value's unit."""
    line = text(expected) if expected is not None else ""
    if line[-1:].isdigit() and unit and unit != Unit.COUNT and not line.endswith(unit):
        line = f"{line} {unit}"
    return line


def area_of(markers: list[str], check_id: str) -> str:
    """The check's area marker (`health`, `queue`...), else its id's prefix in lower case."""
    from opsbook.check import AREAS

    return next((m for m in markers if m in AREAS), check_id.rsplit("-", 1)[0].lower())


def row_value(row: Mapping[str, Any]) -> str:
    return shown(row.get("observed"), row.get("unit"))


# The verdict banner and tables, shared by report.html (inside pytest-html's page) and the
# status page. Colours keep when printed; nothing is wider than a phone's screen.
STYLE = """
.opsbook-verdict { margin: 0 0 12px; padding: 10px 14px; border-radius: 4px; color: #fff;
  border: 2px solid rgba(0,0,0,.25); -webkit-print-color-adjust: exact; print-color-adjust: exact; }
.opsbook-verdict .headline { display: block; font-size: 22px; font-weight: bold; }
.opsbook-verdict .counts { display: block; font-size: 15px; margin-top: 2px; }
.opsbook-verdict.passed { background: #1e7e34; }
.opsbook-verdict.failed { background: #b02a37; }
.opsbook-verdict.not-evaluated { background: #8a5a00; }
.opsbook-verdict.incomplete { background: #5a2d82; }
.opsbook-facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px;
  margin: 0 0 12px; color: #222; }
.opsbook-facts dt { font-weight: bold; }
.opsbook-facts dd { margin: 0; overflow-wrap: anywhere; }
.opsbook-table { border-collapse: collapse; margin: 4px 0 12px; color: #222; }
.opsbook-table th, .opsbook-table td { border: 1px solid #ddd; padding: 3px 6px; text-align: left;
  vertical-align: top; overflow-wrap: break-word; }
.outcome { font-weight: bold; }
.outcome.failed, .outcome.error, .outcome.blocked { color: #b02a37; }
.outcome.waived, .outcome.skipped { color: #8a5a00; }
.outcome.fixed, .outcome.passed { color: #1e7e34; }
.note { display: block; font-size: 11px; color: #444; font-weight: normal; white-space: normal; }
"""
