"""--remediate=plan|apply: link failing checks to their fixes, apply them, and prove the fix.

With `plan`, each failing check that has a remediation gets its plan in the report. With
`apply`, the plan is carried out under the run's lock, the allow-list and the budgets, and then
the very same check runs again (until it passes or `remediation.verify_timeout_s` runs out):
the report records before, action, after, and FIXED or NOT FIXED.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from opsbook.errors import TargetUnreachable
from opsbook.plugin.keys import CHECK, INVENTORY, REDACTOR, TARGETS, audit_trail_gap

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
        help="allow a risky kind of fix: restart, recreate, end-sessions, delete-files",
    )


def pytest_configure(config: pytest.Config) -> None:
    mode = config.getoption("remediate")
    inventory = config.stash[INVENTORY]
    if mode == "off" or inventory is None or hasattr(config, "workerinput"):
        return
    from opsbook.plugin.reports import RUN
    from opsbook.remediate.runner import Remediator

    run = config.stash.get(RUN, None)
    reports_dir = Path(config.getoption("reports_dir") or config.rootpath / "reports")
    allow = {kind.strip() for given in config.getoption("allow") for kind in given.split(",")}
    remediator = Remediator(inventory, reports_dir, run.run_id if run else "", allow)
    config.pluginmanager.register(_RemediationPlugin(config, mode, remediator), "opsbook-fix")


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
        except (AssertionError, TargetUnreachable) as exc:
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


class _RemediationPlugin:
    def __init__(self, config: pytest.Config, mode: str, remediator: Any) -> None:
        self.config = config
        self.mode = mode
        self.remediator = remediator

    def pytest_sessionstart(self) -> None:
        if self.mode == "apply":
            self.remediator.take_lock()

    def pytest_sessionfinish(self) -> None:
        self.remediator.release_lock()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        info = item.stash.get(CHECK, None)
        if (
            call.when != "call"
            or not report.failed
            or info is None
            or info.spec.remediation is None
            or any(name == "unreachable" for name, _ in report.user_properties)
        ):
            return report
        from opsbook.remediate.context import Context

        properties = dict(report.user_properties)
        redact = self.config.stash[REDACTOR]
        ctx = Context(
            self.remediator.inventory,
            info.spec.check_id,
            str(properties.get("target_kind", "")),
            info.target or "",
        )
        attempt = self.remediator.run(info.spec.remediation, ctx, apply=self.mode == "apply")
        before = str(report.longrepr) if report.longrepr else ""
        if attempt.status == "nothing-to-do":
            # The target is fine now (an earlier fix in this run, or it recovered): what the
            # run cached about it is stale, so the check looks again, once.
            recovered, _ = _verify(item, 0)
            if recovered:
                attempt.after = "passed"
                report.outcome = "passed"
                report.longrepr = None
                _take_new_properties(report, item)
        if attempt.status == "applied":
            deadline = self.remediator.inventory.remediation.verify_timeout_s
            fixed, after = _verify(item, deadline)
            attempt.verdict = "FIXED" if fixed else "NOT FIXED"
            attempt.after = redact(after) if after else "passed"
            _take_new_properties(report, item)
            if fixed:
                report.outcome = "passed"
                report.longrepr = None
        missing = self.remediator.record(attempt, ctx, redact)
        if missing:
            what = f"{info.spec.check_id}[{info.target or '-'}]: {attempt.remediation}"
            audit_trail_gap(self.config, f"{what} {attempt.status}, {missing}")
        plan_text = "\n".join(attempt.plan.lines()) if attempt.plan else ""
        report.user_properties.extend(
            [
                ("remediation_status", attempt.status),
                ("remediation_verdict", attempt.verdict or ""),
                ("remediation_reason", redact(attempt.reason)),
                ("remediation_plan", redact(plan_text)),
                ("before", redact(before.split("\n", 1)[0])),
                ("after", attempt.after),
            ]
        )
        note = f"remediation {attempt.summary()}"
        if attempt.after and attempt.verdict == "NOT FIXED":
            note += f"; after: {attempt.after}"
        if report.failed:
            report.longrepr = f"{before}\n{redact(note)}"
        report.sections.append(("opsbook remediation", redact(f"{note}\n{plan_text}")))
        return report
