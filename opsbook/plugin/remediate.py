"""--remediate=plan|apply: link failing checks to their fixes, apply them, and prove the fix.

With `plan`, each failing check that has a remediation gets its plan in the report. With
`apply`, the plan is carried out under the run's lock, the allow-list and the budgets, and then
the very same check runs again (until it passes or `remediation.verify_timeout_s` runs out):
the report records before, action, after, and FIXED or NOT FIXED. Each fix applied or refused
prints one line in the terminal, also with -q.

A check blocked by a dependency that is down is not remediated (opsbook.plugin.dependencies
decides, before this module is asked). A failed check known only by its row is fixed with
`fix_row` once every check ran: under pytest-xdist, where the controlling process has no checks
of its own and the workers never remediate, and for a check that still fails when run again
after its cause was fixed.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from opsbook.errors import NotEvaluated
from opsbook.outcome import FixVerdict, Outcome
from opsbook.plugin.keys import (
    CHECK,
    INVENTORY,
    REDACTOR,
    RUN_ID,
    TARGETS,
    FindingRow,
    FixAttempt,
    Prop,
    audit_trail_gap,
)
from opsbook.remediate.plan import parse_allow, risky_kinds

if TYPE_CHECKING:
    from opsbook.remediate.runner import Attempt, Remediator

MODES = ("off", "plan", "apply")
VERIFY_INTERVAL_S = 0.5


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("opsbook")
    group.addoption(
        "--remediate",
        choices=MODES,
        default="off",
        help="plan: show the fix of each failing check; apply: carry it out and re-check",
    )
    group.addoption(
        "--allow",
        action="append",
        default=[],
        metavar="KIND",
        help=f"allow a risky kind of fix: {', '.join(risky_kinds())} (repeat, or separate "
        "with commas)",
    )


def pytest_configure(config: pytest.Config) -> None:
    try:
        allow = parse_allow(config.getoption("allow"))
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    mode = config.getoption("remediate")
    inventory = config.stash[INVENTORY]
    # An xdist worker never remediates: the controlling process does, once every check ran.
    if mode == "off" or inventory is None or hasattr(config, "workerinput"):
        return
    from opsbook.remediate.runner import Remediator

    reports_dir = Path(config.getoption("reports_dir") or config.rootpath / "reports")
    remediator = Remediator(inventory, reports_dir, config.stash.get(RUN_ID, ""), allow)
    fixer = config.stash[FIXER] = _Fixer(config, mode, remediator)
    config.pluginmanager.register(fixer, "opsbook-fix")


def _reset_targets(item: pytest.Item) -> None:
    targets = item.config.stash.get(TARGETS, None)
    if targets is not None:
        targets.reset()


def _verify(item: pytest.Item, deadline_s: float) -> tuple[bool, str]:
    """Run the check again until it passes or the deadline passes; (passed, last message)."""
    end = time.monotonic() + deadline_s
    while True:
        _reset_targets(item)
        try:
            item.runtest()
        # A skip is not a pass: the fixed thing cannot be judged yet (a restarted container's
        # health is `starting` until its HEALTHCHECK runs), so the check is asked again.
        except (AssertionError, NotEvaluated, pytest.skip.Exception) as exc:
            message = str(exc).split("\n", 1)[0]
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}".split("\n", 1)[0]
        else:
            return True, ""
        if time.monotonic() >= end:
            return False, message
        time.sleep(VERIFY_INTERVAL_S)


def _take_new_properties(report: pytest.TestReport, item: pytest.Item) -> None:
    """The check ran again: its properties (observed value, evidence) are the new run's."""
    new = dict(item.user_properties)
    report.user_properties = [
        *item.user_properties,
        *[(k, v) for k, v in report.user_properties if k not in new],
    ]


def remediate_report(
    item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport
) -> None:
    """Plan or apply the linked fix of a check whose call failed, and prove it by running the
    check again. Called by the one report wrapper (opsbook.plugin.outcomes) once unreachable
    targets and waivers are settled: a check that could not be evaluated, or whose failure is
    waived, is not remediated."""
    fixer = item.config.stash.get(FIXER, None)
    if fixer is not None:
        fixer.remediate(item, call, report)


class _Fixer:
    """The remediation of one run: holds the lock while the run lasts (with `apply`)."""

    def __init__(self, config: pytest.Config, mode: str, remediator: Remediator) -> None:
        self.config = config
        self.mode = mode
        self.remediator = remediator

    def pytest_sessionstart(self) -> None:
        if self.mode == "apply":
            self.remediator.take_lock()

    def pytest_sessionfinish(self) -> None:
        self.remediator.release_lock()

    def remediate(
        self, item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport
    ) -> None:
        info = item.stash.get(CHECK, None)
        if (
            call.when != "call"
            or not report.failed
            or info is None
            or info.spec.remediation is None
            or any(name == Prop.UNREACHABLE for name, _ in report.user_properties)
        ):
            return
        from opsbook.remediate.context import Context

        properties = dict(report.user_properties)
        redact = self.config.stash[REDACTOR]
        ctx = Context(
            self.remediator.inventory,
            info.spec.check_id,
            str(properties.get(Prop.TARGET_KIND, "")),
            info.target or "",
        )
        before = str(report.longrepr) if report.longrepr else ""

        def verify(attempt: Attempt) -> None:
            if attempt.status == "nothing-to-do":
                # The target is fine now (an earlier fix in this run, or it recovered): what
                # the run cached about it is stale, so the check looks again, once.
                recovered, _ = _verify(item, 0)
                if recovered:
                    attempt.after = "passed"
                    report.outcome = "passed"
                    report.longrepr = None
                    _take_new_properties(report, item)
            elif attempt.status == "applied":
                deadline = self.remediator.inventory.remediation.verify_timeout_s
                fixed, after = _verify(item, deadline)
                attempt.verdict = FixVerdict.FIXED if fixed else FixVerdict.NOT_FIXED
                attempt.after = redact(after) if after else "passed"
                _take_new_properties(report, item)
                if fixed:
                    report.outcome = "passed"
                    report.longrepr = None

        started = time.monotonic()
        attempt = self.remediator.apply_one(
            info.spec.remediation, ctx, apply=self.mode == "apply", redact=redact, verify=verify
        )
        self.announce(info.spec.check_id, info.target, attempt, time.monotonic() - started)
        if attempt.not_audited:
            what = f"{info.spec.check_id}[{info.target or '-'}]: {attempt.remediation}"
            audit_trail_gap(self.config, f"{what} {attempt.status}, {attempt.not_audited}")
        plan_text = "\n".join(attempt.plan.lines()) if attempt.plan else ""
        report.user_properties.extend(
            [
                (Prop.REMEDIATION_STATUS, attempt.status),
                (Prop.REMEDIATION_VERDICT, str(attempt.verdict or "")),
                (Prop.REMEDIATION_REASON, redact(attempt.reason)),
                (Prop.REMEDIATION_PLAN, redact(plan_text)),
                (Prop.BEFORE, redact(before.split("\n", 1)[0])),
                (Prop.AFTER, attempt.after),
            ]
        )
        note = f"remediation {attempt.summary()}"
        if attempt.after and attempt.verdict == FixVerdict.NOT_FIXED:
            note += f"; after: {attempt.after}"
        if report.failed:
            report.longrepr = f"{before}\n{redact(note)}"
        report.sections.append(("opsbook remediation", redact(f"{note}\n{plan_text}")))

    def announce(self, check_id: str, target: str | None, attempt: Attempt, seconds: float) -> None:
        """One line in the terminal for each fix carried out or refused, also with -q: the
        check, the target, the fix, FIXED or NOT FIXED (or why not), and how long it took."""
        if self.mode != "apply" or attempt.status in ("planned", "nothing-to-do"):
            return
        terminal = self.config.pluginmanager.get_plugin("terminalreporter")
        if terminal is None:
            return
        action = attempt.remediation.rpartition(".")[2]
        verdict = str(attempt.verdict) if attempt.verdict else attempt.status.upper()
        why = f" ({attempt.reason})" if attempt.reason and not attempt.verdict else ""
        line = f"opsbook fix: {check_id} {target or '-'}: {action} {verdict}{why}"
        redact = self.config.stash[REDACTOR]
        write_own_line(terminal, redact(f"{line} in {seconds:.1f} s"), bold=True)

    def fix_row(self, row: FindingRow, recheck: Callable[[], tuple[Outcome, str]]) -> Attempt:
        """Plan or apply the linked fix of a failed check known by its row only (the controller
        of an xdist run, or a check whose re-check failed at the end of the run): the check is
        run again by `recheck`; the row takes the verdict."""
        from opsbook.remediate.context import Context

        assert row.remediation is not None
        module, _, name = row.remediation.rpartition(".")
        fix = getattr(importlib.import_module(module), name)
        redact = self.config.stash[REDACTOR]
        ctx = Context(
            self.remediator.inventory, row.check_id, row.target_kind or "", row.target or ""
        )
        before = row.message

        def verify(attempt: Attempt) -> None:
            if attempt.status not in ("applied", "nothing-to-do"):
                return
            deadline = self.remediator.inventory.remediation.verify_timeout_s
            end = time.monotonic() + (deadline if attempt.status == "applied" else 0)
            while True:
                outcome, message = recheck()
                if outcome is Outcome.PASSED or time.monotonic() >= end:
                    break
                time.sleep(VERIFY_INTERVAL_S)
            passed = outcome is Outcome.PASSED
            attempt.after = "passed" if passed else redact(message)
            if attempt.status == "applied":
                attempt.verdict = FixVerdict.FIXED if passed else FixVerdict.NOT_FIXED
            if passed:
                row.outcome = Outcome.FIXED if attempt.status == "applied" else Outcome.PASSED

        started = time.monotonic()
        attempt = self.remediator.apply_one(
            fix, ctx, apply=self.mode == "apply", redact=redact, verify=verify
        )
        self.announce(row.check_id, row.target, attempt, time.monotonic() - started)
        if attempt.not_audited:
            what = f"{row.check_id}[{row.target or '-'}]: {attempt.remediation}"
            audit_trail_gap(self.config, f"{what} {attempt.status}, {attempt.not_audited}")
        row.remediation_attempt = FixAttempt(
            status=attempt.status,
            verdict=str(attempt.verdict) if attempt.verdict else None,
            reason=redact(attempt.reason) or None,
            plan=[redact(line) for line in (attempt.plan.lines() if attempt.plan else [])],
            before=before or None,
            after=attempt.after or None,
        )
        return attempt


def write_own_line(terminal: Any, line: str, **markup: bool) -> None:
    """A line of its own in the terminal, also when the line of progress is half written."""
    writer = getattr(terminal, "_tw", None)
    if writer is not None and writer.width_of_current_line:
        terminal.write("\n")
    terminal.write_line(line, **markup)


def fix_row(
    config: pytest.Config, row: FindingRow, recheck: Callable[[], tuple[Outcome, str]]
) -> Attempt | None:
    """The linked fix of a failed check, by its row (None when the run does not remediate)."""
    fixer = config.stash.get(FIXER, None)
    if fixer is None or row.remediation is None:
        return None
    return fixer.fix_row(row, recheck)


FIXER = pytest.StashKey[_Fixer]()
