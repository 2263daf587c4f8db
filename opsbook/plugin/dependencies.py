"""The cause first: a service that is down blocks the failures of the services that need it.

The inventory's `services:` says what each service depends on. A service is *down* in a run when
a check could not reach a target it serves, or when a critical check of it failed (a security or
access finding does not count: an open door does not stop a service from answering). A failure
of a service while something it depends on is down is BLOCKED by that dependency: reported under
its cause, never remediated; the cause's own fix runs first. Prometheus's view of a target (the
`up` series of OBS-002, and the series of the alert rules' metrics, ALERT-003, which a target
takes with it when it goes down) is blocked by that target itself when the target is down,
blocked, or was just restarted by a fix: a monitoring check names the scrape targets it saw,
with their `up`, in its `up` evidence.

The checks of the services others depend on run first (a stable reordering at collection), so
the cause is known, and fixed with `--remediate=apply`, before its dependents run. What could not
be settled in order is settled once every check has run, in dependency order: the fixes still
owed are applied, and a check that saw something a fix then changed (blocked by a cause that is
up again, or a check of a fixed service that failed or could not reach it) is run again, once
after each such fix, within a short window; its new result replaces the old one.

Under pytest-xdist the workers only run checks: the controller, which sees every report, settles
all of this once they are done, and re-checks in a pytest run of its own (`--recheck-into`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from opsbook.outcome import Outcome
from opsbook.plugin.collection import TARGET_KINDS
from opsbook.plugin.keys import CHECK, EVIDENCE_PREFIX, FINDINGS, INVENTORY, TARGETS, Prop
from opsbook.plugin.remediate import fix_row, write_own_line

if TYPE_CHECKING:
    from opsbook.inventory import Inventory
    from opsbook.plugin.keys import FindingRow

# Findings in these areas say nothing about whether a service answers.
NOT_A_CAUSE = frozenset({"security", "access"})
# The evidence in which a monitoring check names each scrape target ("job/instance") and its
# `up` value; a target that is down is the cause of its own absence from monitoring.
UP_EVIDENCE = EVIDENCE_PREFIX + "up"
# Bounds a re-check's pytest run against a hang (the checks have timeouts of their own).
RECHECK_TIMEOUT_S = 300.0
# How long a check blocked by a cause that was fixed may take to pass: facts lag behind a fix
# (Prometheus's next scrape, a client's reconnect). At most the inventory's verify_timeout_s.
RECHECK_WINDOW_S = 10.0
RECHECK_INTERVAL_S = 0.5

# A re-check: node ids -> (outcome, one-line message) for each that ran.
Recheck = Callable[[list[str]], dict[str, tuple[Outcome, str]]]


def pytest_addoption(parser: pytest.Parser) -> None:
    # How the controller of a pytest-xdist run learns what its own re-check run found.
    parser.getgroup("opsbook").addoption("--recheck-into", metavar="FILE", help=argparse.SUPPRESS)


def levels(inventory: Inventory) -> dict[str, int]:
    """Each service's depth in the graph: 0 for one that needs nothing, else one more than the
    deepest of what it depends on (the graph has no cycle: the inventory refuses one)."""
    found: dict[str, int] = {}

    def level(name: str) -> int:
        if name not in found:
            deps = inventory.services[name].depends_on if name in inventory.services else ()
            found[name] = 1 + max(map(level, deps)) if deps else 0
        return found[name]

    for name in inventory.services:
        level(name)
    return found


@dataclass
class Board:
    """What the run knows about causes: which services are down, why, and what they block."""

    inventory: Inventory
    distributed: bool = False
    level: dict[str, int] = field(default_factory=dict)
    # service -> the line that says why it is down ("QUEUE-001 queue: redis queue: ...")
    down: dict[str, str] = field(default_factory=dict)
    # node id -> the services its check is about (from its target parameters)
    services: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # node id -> how many fixes had been proved when it was last run again (at the end of the
    # run): a check is run again once after each fix that may change what it sees
    rechecked: dict[str, int] = field(default_factory=dict)
    # services a fix proved FIXED in this run, with the count of fixes proved by then
    fixed_at: dict[str, int] = field(default_factory=dict)
    fixes: int = 0
    # services whose own failures are blocked by a cause (service -> the cause): not healthy,
    # but not a cause either
    blocked_services: dict[str, str] = field(default_factory=dict)
    # True while checks are run again: the report hooks then leave them alone
    rechecking: bool = False

    def __post_init__(self) -> None:
        self.level = levels(self.inventory)

    def rank(self, services: Iterable[str]) -> int:
        """Where a check on these services comes: after everything they depend on. A check of
        no service (a host, the whole deployment) and a check of monitoring, which watches
        every service, come after all the others: what they see down is known by then."""
        last = max(self.level.values(), default=0) + 1
        ranks = [last if self._role(s) == "monitoring" else self.level.get(s, 0) for s in services]
        return max(ranks) if ranks else last

    def _role(self, service: str) -> str:
        known = self.inventory.services.get(service)
        return known.role if known is not None else "other"

    def blocker(self, services: tuple[str, ...], up_evidence: object = None) -> str | None:
        """The service that is down and blocks a failure of these services, if one is."""
        for service in services:
            for dependency in self.inventory.dependencies(service):
                if dependency in self.down and dependency not in services:
                    return dependency
        # Prometheus sees a target down that is down (or blocked), or that a fix restarted
        # moments ago (its next scrape has not come yet): the target itself is the cause.
        scraped = self._down_scrape_targets(up_evidence)
        troubled = self.down.keys() | self.fixed_at.keys() | self.blocked_services.keys()
        if scraped and all(s in troubled for s in scraped):
            return scraped[0]
        return None

    def _down_scrape_targets(self, evidence: object) -> list[str]:
        """The services of the scrape targets a monitoring check saw down ("job/instance": the
        job names the service)."""
        if not isinstance(evidence, str):
            return []
        try:
            up = json.loads(evidence)
        except ValueError:
            return []
        if not isinstance(up, dict):
            return []
        return [
            self.inventory.service_of(str(name).split("/", 1)[0])
            for name, value in up.items()
            if str(value) != "1"
        ]

    def mark_blocked(self, nodeid: str, cause: str) -> None:
        services = self.services.get(nodeid, ())
        if len(services) == 1 and services[0] != cause:
            self.blocked_services.setdefault(services[0], cause)

    def note(self, nodeid: str, outcome: Outcome, line: str, properties: dict[str, Any]) -> None:
        """Learn from a check's final outcome whether its service is down (or up again)."""
        services = self.services.get(nodeid, ())
        if len(services) != 1:
            # A check of two services cannot say which of them is down.
            return
        service = services[0]
        if outcome in (Outcome.PASSED, Outcome.FIXED):
            if outcome is Outcome.FIXED:
                self.down.pop(service, None)
                self.fixes += 1
                self.fixed_at[service] = self.fixes
            return
        markers = set(str(properties.get(Prop.MARKERS, "")).split(","))
        unreachable = outcome is Outcome.NOT_EVALUATED and Prop.UNREACHABLE in properties
        critical = (
            outcome is Outcome.FAILED
            and properties.get(Prop.SEVERITY) == "critical"
            and not markers & NOT_A_CAUSE
        )
        if unreachable or critical:
            check = properties.get(Prop.CHECK_ID, "")
            target = properties.get(Prop.TARGET) or ""
            self.down.setdefault(service, f"{check} {target}: {line}".strip())


BOARD = pytest.StashKey[Board]()


def _distributed(config: pytest.Config) -> bool:
    """Whether this process is the controller of a pytest-xdist run (it runs no check)."""
    return str(getattr(config.option, "dist", "no")) != "no"


def pytest_configure(config: pytest.Config) -> None:
    inventory = config.stash.get(INVENTORY, None)
    if inventory is None or hasattr(config, "workerinput") or config.getoption("recheck_into"):
        # An xdist worker knows only its share of the run: the controller decides. A re-check
        # run reports what it sees; the run that started it knows the causes.
        return
    board = config.stash[BOARD] = Board(inventory, distributed=_distributed(config))
    config.pluginmanager.register(_Rows(config, board), "opsbook-dependencies-rows")


def rechecking(config: pytest.Config) -> bool:
    """Whether checks are being run again at the end of the run (then nothing is remediated
    or blocked by the report hooks: the end of the run settles them)."""
    board = config.stash.get(BOARD, None)
    return board is not None and board.rechecking


def _services_of(item: pytest.Item, inventory: Inventory) -> tuple[str, ...]:
    params = getattr(getattr(item, "callspec", None), "params", {})
    services = [
        inventory.service_of(str(value))
        for name, value in params.items()
        if name in TARGET_KINDS and TARGET_KINDS[name] != "host" and value is not None
    ]
    return tuple(dict.fromkeys(services))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Name each check's services in its report, and run the checks of what others depend on
    first (a stable sort: the order within a level is the one collected)."""
    inventory = config.stash.get(INVENTORY, None)
    if inventory is None:
        return
    board = Board(inventory)
    of: dict[str, tuple[str, ...]] = {}
    for item in items:
        if CHECK not in item.stash:
            continue
        services = of[item.nodeid] = _services_of(item, inventory)
        item.user_properties.append((Prop.SERVICES, ",".join(services)))
    if any(service.depends_on for service in inventory.services.values()):
        items.sort(key=lambda item: board.rank(of.get(item.nodeid, ())))


def _first_line(report: pytest.TestReport) -> str:
    text = str(report.longrepr) if report.longrepr else ""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def settle_blocked(
    item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport
) -> bool:
    """A failure (or a check that could not be evaluated) while a dependency is down becomes
    BLOCKED by it: a skip that names the cause. True when it did; it is then not remediated.

    Called by the one report wrapper (opsbook.plugin.outcomes), after a waiver."""
    board = item.config.stash.get(BOARD, None)
    if board is None or board.rechecking or not report.failed or CHECK not in item.stash:
        return False
    if call.when not in ("setup", "call"):
        return False
    properties = dict(report.user_properties)
    services = board.services.setdefault(item.nodeid, _services_from(properties))
    cause = board.blocker(services, properties.get(UP_EVIDENCE))
    if cause is None:
        return False
    reason = f"blocked by {cause}: {_first_line(report)}"
    _, lineno, _ = item.location
    report.outcome = "skipped"
    report.longrepr = (str(item.path), (lineno or 0) + 1, reason)
    report.user_properties.append((Prop.BLOCKED_BY, cause))
    board.mark_blocked(item.nodeid, cause)
    return True


def _services_from(properties: dict[str, Any]) -> tuple[str, ...]:
    return tuple(s for s in str(properties.get(Prop.SERVICES, "")).split(",") if s)


def note_outcome(item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport) -> None:
    """After remediation: learn from the check's final outcome whether its service is down."""
    board = item.config.stash.get(BOARD, None)
    if board is None or board.rechecking or board.distributed or call.when not in ("setup", "call"):
        return
    properties = dict(report.user_properties)
    if Prop.BLOCKED_BY in properties or report.skipped:
        return
    if call.when == "setup" and report.passed:
        return
    targets = item.config.stash.get(TARGETS, None)
    if targets is not None and targets.cut_off is not None:
        return  # nothing of the deployment answers: no one service is known to be the cause
    board.services.setdefault(item.nodeid, _services_from(properties))
    board.note(item.nodeid, _outcome_of(report, properties), _first_line(report), properties)


def _outcome_of(report: pytest.TestReport, properties: dict[str, Any]) -> Outcome:
    if report.passed:
        fixed = properties.get(Prop.REMEDIATION_VERDICT) == "FIXED"
        return Outcome.FIXED if fixed else Outcome.PASSED
    if Prop.UNREACHABLE in properties or report.when != "call":
        return Outcome.NOT_EVALUATED
    return Outcome.FAILED


def pytest_report_teststatus(report: pytest.TestReport) -> tuple[str, str, str] | None:
    """A blocked check has a word of its own in pytest's counts line: `2 blocked`."""
    if report.skipped and any(k == Prop.BLOCKED_BY for k, _ in report.user_properties):
        return "blocked", "b", "BLOCKED"
    return None


class _Rows:
    """Marks the row of a blocked check, and learns each check's services from its report."""

    def __init__(self, config: pytest.Config, board: Board) -> None:
        self.config = config
        self.board = board

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # trylast: after the findings recorder has made the row.
        properties = dict(report.user_properties)
        if Prop.SERVICES in properties:
            self.board.services.setdefault(report.nodeid, _services_from(properties))
        cause = properties.get(Prop.BLOCKED_BY)
        if cause is None or not report.skipped:
            return
        row = self.config.stash[FINDINGS].rows.get(report.nodeid)
        if row is not None:
            row.outcome, row.blocked_by = Outcome.BLOCKED, str(cause)


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session: pytest.Session) -> Generator[None, object, object]:
    result = yield
    board = session.config.stash.get(BOARD, None)
    if board is not None and not session.shouldstop:
        settle_run(session, board)
    return result


def _row_rank(board: Board, row: FindingRow) -> int:
    return board.rank(board.services.get(row.nodeid, ()))


def settle_run(session: pytest.Session, board: Board) -> None:
    """Once every check has run: decide what is blocked (under xdist), apply the fixes still
    owed in dependency order, and run again what a fixed cause blocked."""
    config = session.config
    rows = config.stash[FINDINGS].rows
    recheck = _subprocess_recheck(config) if board.distributed else _inprocess_recheck(session)
    changes = _Changes(config, session)
    if board.distributed:
        for row in sorted(rows.values(), key=lambda r: _row_rank(board, r)):
            _classify(board, row, changes)
    while True:
        owed = [
            row
            for row in rows.values()
            if row.outcome is Outcome.FAILED and row.remediation and row.remediation_attempt is None
        ]
        for row in sorted(owed, key=lambda r: _row_rank(board, r)):
            cause = board.blocker(board.services.get(row.nodeid, ()), row.evidence.get("up"))
            if cause is not None:
                changes.blocked(row, cause, board)
                continue
            attempt = fix_row(config, row, _one(recheck, row.nodeid))
            if attempt is None:
                break
            if row.outcome is Outcome.FIXED:
                changes.moved(row.nodeid, "passed")
            board.note(row.nodeid, row.outcome, row.message, _properties_of(row))
        # What a cause that is up again blocked (not while the cause is itself blocked: a view
        # of the backend waits for the backend's own re-check and fix).
        unsettled = set(board.down) | set(board.blocked_services)
        again = [
            row.nodeid
            for row in rows.values()
            if _unblocked(board, row, unsettled) or _stale(board, row)
        ]
        if not again:
            return
        board.rechecked.update(dict.fromkeys(again, board.fixes))
        window = min(RECHECK_WINDOW_S, board.inventory.remediation.verify_timeout_s)
        for nodeid, (outcome, message) in _recheck_within(recheck, again, window).items():
            row = rows[nodeid]
            for service in board.services.get(nodeid, ()):
                board.blocked_services.pop(service, None)
            changes.rechecked(row, outcome, message)
            board.note(nodeid, outcome, message, _properties_of(row))


def _unblocked(board: Board, row: FindingRow, unsettled: set[str]) -> bool:
    """A check blocked by a cause that is no longer down (nor itself blocked), not run again
    since the latest fix."""
    return (
        row.outcome is Outcome.BLOCKED
        and row.blocked_by not in unsettled
        and board.rechecked.get(row.nodeid, -1) < board.fixes
    )


def _stale(board: Board, row: FindingRow) -> bool:
    """A check of a service that a fix proved FIXED after the check last ran, which failed
    (with no fix of its own tried) or could not be evaluated: it saw the service broken."""
    bad = row.outcome is Outcome.NOT_EVALUATED or (
        row.outcome is Outcome.FAILED and row.remediation_attempt is None
    )
    fixed = [board.fixed_at[s] for s in board.services.get(row.nodeid, ()) if s in board.fixed_at]
    return bad and bool(fixed) and board.rechecked.get(row.nodeid, -1) < max(fixed)


def _recheck_within(
    recheck: Recheck, nodeids: list[str], window_s: float
) -> dict[str, tuple[Outcome, str]]:
    """Run the checks again, and those that do not pass again until the window closes."""
    end = time.monotonic() + window_s
    results = recheck(nodeids)
    while True:
        waiting = [n for n, (outcome, _) in results.items() if outcome.bad]
        if not waiting or time.monotonic() >= end:
            return results
        time.sleep(RECHECK_INTERVAL_S)
        results.update(recheck(waiting))


def _one(recheck: Recheck, nodeid: str) -> Callable[[], tuple[Outcome, str]]:
    def once() -> tuple[Outcome, str]:
        return recheck([nodeid]).get(nodeid, (Outcome.NOT_EVALUATED, "the re-check did not run"))

    return once


def _properties_of(row: FindingRow) -> dict[str, Any]:
    properties: dict[str, Any] = {
        Prop.CHECK_ID: row.check_id,
        Prop.TARGET: row.target or "",
        Prop.SEVERITY: row.severity,
        Prop.MARKERS: ",".join(row.markers),
    }
    if row.unreachable:
        properties[Prop.UNREACHABLE] = row.message
    return properties


def _classify(board: Board, row: FindingRow, changes: _Changes) -> None:
    """Under xdist, in dependency order: a bad row is blocked by a cause already known, or is
    one (the reports reached the controller in whatever order the workers finished)."""
    if row.outcome not in (Outcome.FAILED, Outcome.NOT_EVALUATED):
        return
    cause = board.blocker(board.services.get(row.nodeid, ()), row.evidence.get("up"))
    if cause is not None:
        changes.blocked(row, cause, board)
        return
    board.note(row.nodeid, row.outcome, row.message, _properties_of(row))


class _Changes:
    """A row settled after its report was shown: the terminal's counts and pytest's count of
    failures follow it, so that the counts line and the exit code agree with findings.json."""

    def __init__(self, config: pytest.Config, session: pytest.Session) -> None:
        self.session = session
        self.terminal: Any = config.pluginmanager.get_plugin("terminalreporter")

    def moved(self, nodeid: str, category: str, message: str = "") -> None:
        if self.terminal is None:
            return
        stats: dict[str, list[Any]] = self.terminal.stats
        for name in ("failed", "error", "blocked", "passed", "skipped"):
            for report in list(stats.get(name, [])):
                if getattr(report, "nodeid", None) != nodeid or name == category:
                    continue
                if getattr(report, "when", "call") not in ("setup", "call"):
                    continue
                stats[name].remove(report)
                if report.failed and category != "failed":
                    self.session.testsfailed = max(0, self.session.testsfailed - 1)
                report.outcome = {"blocked": "skipped", "error": "failed"}.get(category, category)
                if report.outcome == "skipped" and not isinstance(report.longrepr, tuple):
                    # pytest's summary of skips reads (path, line, reason).
                    path, lineno, _ = report.location
                    report.longrepr = (path, (lineno or 0) + 1, message or str(report.longrepr))
                elif report.outcome == "passed":
                    report.longrepr = None
                stats.setdefault(category, []).append(report)
        if hasattr(self.terminal, "_set_main_color"):
            # The colour of the counts line follows the categories (pytest's own, private).
            self.terminal._set_main_color()

    def blocked(self, row: FindingRow, cause: str, board: Board) -> None:
        board.mark_blocked(row.nodeid, cause)
        row.outcome, row.blocked_by = Outcome.BLOCKED, cause
        row.message = f"blocked by {cause}: {row.message}"
        self.moved(row.nodeid, "blocked", row.message)

    def rechecked(self, row: FindingRow, outcome: Outcome, message: str) -> None:
        """The re-check's result replaces the blocked (or not evaluated) one."""
        row.blocked_by = None
        row.outcome, row.message = outcome, message
        row.unreachable = outcome is Outcome.NOT_EVALUATED and row.unreachable
        category = {
            Outcome.PASSED: "passed",
            Outcome.FAILED: "failed",
            Outcome.NOT_EVALUATED: "error",
            Outcome.BLOCKED: "blocked",
        }.get(outcome, "skipped")
        self.moved(row.nodeid, category, message)
        if self.terminal is not None:
            line = f"opsbook re-check: {row.check_id} {row.target or '-'}: {outcome.name}"
            write_own_line(self.terminal, line + (f" ({message})" if message else ""))


def _inprocess_recheck(session: pytest.Session) -> Recheck:
    """Run checks of this process again, each a whole protocol (its fixtures set up afresh),
    logging nothing: the row takes the result."""
    from _pytest.runner import runtestprotocol

    items = {item.nodeid: item for item in session.items}
    board = session.config.stash[BOARD]

    def recheck(nodeids: list[str]) -> dict[str, tuple[Outcome, str]]:
        results: dict[str, tuple[Outcome, str]] = {}
        targets = session.config.stash.get(TARGETS, None)
        if targets is not None:
            targets.reset()
        board.rechecking = True
        try:
            for nodeid in nodeids:
                item = items.get(nodeid)
                if item is None:
                    continue
                reports = runtestprotocol(item, log=False, nextitem=None)
                results[nodeid] = _result_of(reports)
        finally:
            board.rechecking = False
        return results

    return recheck


def _result_of(reports: list[pytest.TestReport]) -> tuple[Outcome, str]:
    for report in reports:
        if report.when == "teardown":
            continue
        properties = dict(report.user_properties)
        if report.failed:
            unreachable = Prop.UNREACHABLE in properties or report.when == "setup"
            return (Outcome.NOT_EVALUATED if unreachable else Outcome.FAILED), _first_line(report)
        if report.skipped:
            return Outcome.NOT_APPLICABLE, _first_line(report)
    return Outcome.PASSED, ""


def _subprocess_recheck(config: pytest.Config) -> Recheck:
    """The controller of an xdist run has no checks of its own: it runs pytest on the node ids
    (same inventory and rootdir, no reports, no remediation) and reads what that run found."""
    from opsbook.plugin.inventory_option import chosen_inventory_path

    inventory = chosen_inventory_path(config)

    def recheck(nodeids: list[str]) -> dict[str, tuple[Outcome, str]]:
        with tempfile.TemporaryDirectory(prefix="opsbook-recheck-") as folder:
            into = Path(folder) / "results.json"
            command = [
                sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-reports",
                f"--rootdir={config.rootpath}", f"--recheck-into={into}", "-n", "0",
                # Whatever PYTEST_ADDOPTS says: a re-check only looks.
                "--remediate=off",
                *([f"--inventory={inventory}"] if inventory else []),
                *(["-c", str(config.inipath)] if config.inipath else []),
                *nodeids,
            ]  # fmt: skip
            try:
                subprocess.run(
                    command, cwd=config.rootpath, env=dict(os.environ), capture_output=True,
                    text=True, timeout=RECHECK_TIMEOUT_S, check=False,
                )  # fmt: skip
            except (OSError, subprocess.TimeoutExpired):
                # Nothing is known: each check stays as it was ("the re-check did not run").
                return {}
            if not into.exists():
                return {}
            found = json.loads(into.read_text(encoding="utf-8"))
        return {nodeid: (Outcome(outcome), message) for nodeid, (outcome, message) in found.items()}

    return recheck


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """A re-check run writes what it found for the controller that started it."""
    into = session.config.getoption("recheck_into", None)
    if not into:
        return
    rows = session.config.stash[FINDINGS].rows
    Path(into).write_text(
        json.dumps({nodeid: [row.outcome, row.message] for nodeid, row in rows.items()}),
        encoding="utf-8",
    )
