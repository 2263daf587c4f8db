"""Outcomes: one line for an unreachable target, compact failures, redaction, exit codes.

Exit codes (documented in the README) keep "could not evaluate" apart from "failed":

    0  every selected check passed          4  usage error: bad inventory, option or check
    1  at least one check failed            5  no check selected
    2  interrupted (or a check module did not import)
    3  internal error                       10 nothing failed, but some checks could not be
                                               evaluated (unreachable target, broken setup)
                                            11 nothing failed, but the audit trail is not
                                               complete: reports or an audit-log entry could
                                               not be written (the terminal says which, why)
"""

from __future__ import annotations

import copy
from collections.abc import Generator

import pytest

from opsbook.errors import NotEvaluated
from opsbook.outcome import Outcome
from opsbook.plugin.dependencies import BOARD, note_outcome, rechecking, settle_blocked
from opsbook.plugin.keys import AUDIT_TRAIL_GAPS, CHECK, EVIDENCE_PREFIX, FINDINGS, REDACTOR, Prop
from opsbook.plugin.remediate import remediate_report
from opsbook.plugin.waivers import settle_waiver

EXIT_NOT_EVALUATED = 10
EXIT_AUDIT_TRAIL_INCOMPLETE = 11


def _assertion_message(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    """The author's message without pytest's introspection lines (`assert x == y`)."""
    text = str(excinfo.value)
    first = text.split("\n", 1)[0].strip()
    return first or "assertion failed"


def _one_line(item: pytest.Item, excinfo: pytest.ExceptionInfo[BaseException] | None) -> str | None:
    """The one line a check's report shows for its exception, or None for pytest's own."""
    if excinfo is None:
        return None
    if isinstance(excinfo.value, NotEvaluated):
        # Could not evaluate: one line, and an ERROR however far the check got.
        return item.config.stash[REDACTOR](excinfo.value.line())
    if (
        CHECK in item.stash
        and excinfo.errisinstance(AssertionError)
        and item.config.option.tbstyle == "auto"
    ):
        # A broken expectation is a verdict, not a crash: the message says observed vs
        # expected and names the target, so a traceback would only bury it.
        return _assertion_message(excinfo)
    return None


@pytest.hookimpl(tryfirst=True, specname="pytest_runtest_makereport")
def pytest_runtest_makereport_in_one_line(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> pytest.TestReport | None:
    """A report that shows one line is made without pytest's traceback: formatting one reads
    and parses every source file in it, a second of CPU for a deployment whose 35 checks
    could not reach it (bench/fleet.py, all hung)."""
    line = _one_line(item, call.excinfo)
    if line is None:
        return None  # pytest's own report
    shown = copy.copy(call)
    shown.excinfo = line  # type: ignore[assignment]  # pytest takes a string as the repr
    return pytest.TestReport.from_item_and_call(item, shown)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    redact = item.config.stash[REDACTOR]
    excinfo = call.excinfo
    if excinfo is not None and isinstance(excinfo.value, NotEvaluated):
        report.user_properties.append((Prop.UNREACHABLE, str(report.longrepr)))
    if report.longrepr is not None:
        text = str(report.longrepr)
        masked = redact(text)
        if masked != text:
            report.longrepr = masked
    report.sections = [(name, redact(content)) for name, content in report.sections]
    if report.failed and CHECK in item.stash:
        # The evidence behind a failure, where a person reads it: under the failure in the
        # terminal, in the HTML report's log cell. (Already redacted by the finding fixture.)
        for name, content in report.user_properties:
            if name.startswith(EVIDENCE_PREFIX):
                label = f"evidence: {name.removeprefix(EVIDENCE_PREFIX)}"
                report.sections.append((label, str(content)))
    # The order is owned here, not left to pluggy: could not evaluate (above), then a waiver
    # (a waived failure is not remediated), then a dependency that is down (a blocked failure
    # is not remediated: the cause's fix comes first), then the linked fix; what is left
    # tells whether the check's service is down. A check run again at the end of the run is
    # settled there.
    settle_waiver(item, call, report)
    if rechecking(item.config):
        return report
    if not settle_blocked(item, call, report):
        remediate_report(item, call, report)
    note_outcome(item, call, report)
    return report


def pytest_report_teststatus(report: pytest.TestReport) -> tuple[str, str, str] | None:
    """A check that could not be evaluated is an ERROR in pytest's own counts too, also when
    its target was lost during the call (pytest would count that FAILED): the counts line
    agrees with findings.json's."""
    if report.when == "call" and report.failed and Prop.UNREACHABLE in dict(report.user_properties):
        return "error", "E", "ERROR"
    return None


def exit_code(config: pytest.Config, pytest_status: int, failures_outside_checks: bool) -> int:
    """The run's exit code from the findings, keeping pytest's own codes above 1.

    A failed check wins over an incomplete audit trail, which wins over checks that could not
    be evaluated.
    """
    if pytest_status not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED, EXIT_NOT_EVALUATED):
        return pytest_status
    counts = config.stash[FINDINGS].counts()
    failed = counts.get(Outcome.FAILED, 0)
    errors = counts.get(Outcome.NOT_EVALUATED, 0) + counts.get(Outcome.BLOCKED, 0)
    if failed or failures_outside_checks:
        return int(pytest.ExitCode.TESTS_FAILED)
    if config.stash.get(AUDIT_TRAIL_GAPS, None):
        return EXIT_AUDIT_TRAIL_INCOMPLETE
    if errors:
        return EXIT_NOT_EVALUATED
    return pytest_status


def settle_exit_code(session: pytest.Session) -> None:
    counts = session.config.stash[FINDINGS].counts()
    outside = session.testsfailed > counts.get(Outcome.FAILED, 0) + counts.get(
        Outcome.NOT_EVALUATED, 0
    )
    session.exitstatus = exit_code(session.config, session.exitstatus, outside)


@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish(session: pytest.Session) -> Generator[None, None, None]:
    yield
    settle_exit_code(session)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    rows = terminalreporter.config.stash[FINDINGS].rows.values()
    unreachable: dict[str, int] = {}
    for row in rows:
        if row.unreachable:
            unreachable[row.message] = unreachable.get(row.message, 0) + 1
    gaps = terminalreporter.config.stash.get(AUDIT_TRAIL_GAPS, [])
    if gaps:
        terminalreporter.section("not in the audit trail", sep="-", red=True)
        for line in gaps:
            terminalreporter.line(line)
    if unreachable:
        terminalreporter.section("targets that could not be reached", sep="-", yellow=True)
        for line, count in unreachable.items():
            checks = "check" if count == 1 else "checks"
            terminalreporter.line(f"{line}  ({count} {checks} not evaluated)")
    _blocked_summary(terminalreporter)


def _blocked_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Each cause, then the checks it blocks: what to fix first, and what waits for it."""
    config = terminalreporter.config
    blocked: dict[str, list[str]] = {}
    for row in config.stash[FINDINGS].rows.values():
        if row.outcome is Outcome.BLOCKED and row.blocked_by:
            blocked.setdefault(row.blocked_by, []).append(
                f"  {row.check_id} {row.target or '-'}: {row.message}"
            )
    if not blocked:
        return
    board = config.stash.get(BOARD, None)
    causes = board.down if board is not None else {}
    terminalreporter.section("blocked by a dependency (fix the cause first)", sep="-", yellow=True)
    for cause, lines in blocked.items():
        why = causes.get(cause)
        terminalreporter.line(f"{cause} is down: {why}" if why else f"{cause} is down")
        for line in lines:
            terminalreporter.line(line)
