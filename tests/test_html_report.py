"""report.html as a person sees it, in a real browser (headless Chromium driven by selenium).

The run is real: test_findings_schema's mixed suite (a pass, a critical failure, targets that
cannot be reached, a check not applicable, a waived failure) plus a failing check whose linked
fix heals it (FIXED with --remediate=apply), run in-process with pytester. pytest-html renders
the table in the browser from its JSON, so only a browser shows what a reader gets.

Chromium is Debian's `chromium` and `chromium-driver` (scripts/install-system-packages); the
browser tests skip when they are not installed here, and fail instead in CI (`CI` set). Each page
opened is also kept as a screenshot in the reports folder of the run it shows, beside its page
(`<run folder>/screenshots/`), so that a person can see what the browser saw.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import RunChecks
from test_findings_schema import mixed_suite, run_folder

from opsbook.sandbox.stack import Stack

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
FIRST_SCREEN = (1280, 900)
PHONE_WIDTH = 390

HEALING_FIX = '''
from pathlib import Path

from opsbook.remediate.context import Context
from opsbook.remediate.plan import Plan, StepKind

HEALED = Path(__file__).with_name("healed")


def heal_demo(ctx: Context, *, apply: bool) -> Plan:
    """Create the demo's flag file.

    Changes: creates a file beside the checks.
    Privileges: write access to that folder.
    Undo: delete the file.
    """
    plan = Plan.for_fix(ctx)
    if HEALED.exists():
        return plan.nothing("the flag file is there")
    plan.add("create the flag file", f"touch {HEALED}", StepKind.SCALE, HEALED.touch)
    return plan.finish(apply, ctx.gate)
'''

HEALED_CHECK = '''
import pytest
from opsbook import Severity, check
from opsbook.outcome import Unit
from fixes import HEALED, heal_demo

@pytest.mark.daily
@pytest.mark.health
@check("MIX-007", Severity.MEDIUM, remediation=heal_demo)
def test_heals(finding):
    """The demo's flag file is there.

    Risk: the demo stays down until someone notices.
    """
    finding.attach("listing", "secret-evidence-never-on-the-status-page")
    finding.expect(int(HEALED.exists()), ">= 1", ok=HEALED.exists(), unit=Unit.COUNT,
                   problem="no flag file")
'''


def chromium_or_skip() -> tuple[str, str]:
    """Chromium and its driver; a skip naming what is missing (a failure in CI, which has them)."""
    missing = [name for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER))
               if path is None]  # fmt: skip
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (the dev extra)")
    if missing:
        reason = f"{' and '.join(missing)} not installed here (scripts/install-system-packages)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests: {reason}")
        pytest.skip(reason)
    assert CHROMIUM is not None
    assert CHROMEDRIVER is not None
    return CHROMIUM, CHROMEDRIVER


def open_chromium(profile: Path) -> Any:
    """Headless Chromium through Debian's chromedriver: nothing is downloaded."""
    chromium, chromedriver = chromium_or_skip()
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless",
        "--no-sandbox",  # as root, in a container
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        f"--window-size={FIRST_SCREEN[0]},{FIRST_SCREEN[1]}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(chromedriver))
    driver.set_page_load_timeout(60)
    return driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    driver = open_chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield driver
    finally:
        driver.quit()


def load(browser: Any, page: Path, width: int = FIRST_SCREEN[0]) -> Path:
    """Open a page at the given width, once pytest-html's script has drawn the table; its first
    screen is kept in the run's reports folder (screenshots/PAGE-WIDTH.png), which is returned."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser.set_window_size(width, FIRST_SCREEN[1])
    browser.get(page.as_uri())
    WebDriverWait(browser, 30).until(
        lambda driver: driver.execute_script("return document.readyState") == "complete"
    )
    screenshots = page.parent / "screenshots"
    screenshots.mkdir(exist_ok=True)
    screenshot = screenshots / f"{page.stem}-{width}.png"
    assert browser.save_screenshot(str(screenshot)), f"no screenshot of {page}"
    return screenshot


def healing_suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    suite = mixed_suite(pytester, monkeypatch)
    suite.makepyfile(fixes=HEALING_FIX, test_heals=HEALED_CHECK)
    monkeypatch.syspath_prepend(str(suite.path))
    # The deployment's state (lock, budgets, audit log) stays in the test's folder.
    monkeypatch.setenv("OPSBOOK_HOME", str(suite.path))
    return suite


@pytest.fixture
def fixed_run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The mixed run with --remediate=apply: MIX-007 is FIXED. Its run folder."""
    suite = healing_suite(pytester, monkeypatch)
    result = suite.runpytest("-m", "daily", "--remediate=apply")
    assert result.ret == 1, result.stdout.str()
    return run_folder(suite)


def rows(browser: Any) -> list[dict[str, str]]:
    """The results table's rows as shown (hidden cells read as empty), top to bottom."""
    from selenium.webdriver.common.by import By

    shown = []
    for row in browser.find_elements(By.CSS_SELECTOR, "#results-table tr.collapsible"):
        cells = {}
        for cell in row.find_elements(By.CSS_SELECTOR, "td"):
            column = next(c for c in cell.get_attribute("class").split() if c.startswith("col-"))
            cells[column.removeprefix("col-")] = cell.text
        shown.append(cells)
    return shown


def row_of(browser: Any, check_id: str) -> dict[str, str]:
    return next(row for row in rows(browser) if row["check"] == check_id)


def details_of(browser: Any, check_id: str) -> str:
    """The text below a row (why, risk, waiver, fix); a collapsed row (pytest-html collapses
    passed ones, a fixed check among them) is opened by a click, as a person would."""
    from selenium.webdriver.common.by import By

    for body in browser.find_elements(By.CSS_SELECTOR, "#results-table tbody.results-table-row"):
        check = body.find_elements(By.CSS_SELECTOR, "td.col-check")
        if check and check[0].text == check_id:
            if not body.find_element(By.CSS_SELECTOR, ".extras-row").is_displayed():
                check[0].click()
                return details_of(browser, check_id)  # pytest-html draws the table anew
            return str(body.find_element(By.CSS_SELECTOR, ".extraHTML").text)
    raise AssertionError(f"no row for {check_id}")


def on_first_screen(browser: Any, selector: str) -> bool:
    script = (
        "const e = document.querySelector(arguments[0]);"
        "return e !== null && e.getBoundingClientRect().top >= 0"
        " && e.getBoundingClientRect().top < window.innerHeight;"
    )
    return bool(browser.execute_script(script, selector))


def test_the_first_screen_says_the_verdict_who_ran_it_and_the_worst_row_first(
    browser: Any, fixed_run: Path
) -> None:
    load(browser, fixed_run / "report.html")
    from selenium.webdriver.common.by import By

    verdict = browser.find_element(By.ID, "opsbook-verdict").text
    assert verdict.splitlines() == [
        "FAILED",
        "1 failed; 2 could not evaluate; 1 waived; 1 fixed; 1 not applicable; 1 passed",
    ]
    assert on_first_screen(browser, "#opsbook-verdict")
    # pytest-html's filters count as the verdict does.
    filters = browser.find_element(By.CSS_SELECTOR, ".filters").text
    for count in ("1 Failed", "2 Could not evaluate", "1 Waived", "2 Passed or fixed"):
        assert count in filters, filters
    provenance = browser.find_element(By.ID, "opsbook-provenance").text
    from opsbook import version

    assert f"{version.version()}, commit {version.commit()}" in provenance
    assert "Deployment\nmixed" in provenance
    assert f"{fixed_run.parent.parent / 'inventory.yaml'} (SHA-256 " in provenance
    assert "Selection\n-m daily" in provenance
    assert f"Operator\n{getpass.getuser()}@{socket.gethostname()}" in provenance
    assert f"Run\n{fixed_run.name.rsplit('-', 1)[1]}" in provenance
    # The critical failure first, on the first screen, with its values' units.
    first = rows(browser)[0]
    assert (first["check"], first["outcome"], first["severity"]) == (
        "MIX-002",
        "Failed",
        "critical",
    )
    assert (first["observed"], first["expected"]) == ("93.5 %", "<= 80 %")
    assert first["title"] == "Disk use is below the limit."
    assert on_first_screen(browser, "#results-table tr.collapsible")
    assert "Risk: writes fail when the disk is full." in details_of(browser, "MIX-002")
    # Then what else needs a person, worst first; then the rest.
    order = [(row["check"], row["outcome"].split("\n")[0]) for row in rows(browser)]
    assert order == [
        ("MIX-002", "Failed"),
        ("MIX-003", "Could not evaluate"),
        ("MIX-006", "Could not evaluate"),
        ("MIX-001", "Passed"),
        ("MIX-005", "Waived"),
        ("MIX-007", "Fixed"),
        ("MIX-004", "Not applicable"),
    ]


def test_each_outcome_is_said_in_opsbooks_words(browser: Any, fixed_run: Path) -> None:
    load(browser, fixed_run / "report.html")
    fixed = row_of(browser, "MIX-007")
    assert fixed["outcome"] == "Fixed\nby heal_demo"
    assert "Passed" not in fixed["outcome"]
    assert "Fix: fixes.heal_demo (Create the demo's flag file.); FIXED" in details_of(
        browser, "MIX-007"
    )
    waived = row_of(browser, "MIX-005")
    assert waived["outcome"] == "Waived\nalice, until 2999-01-01"
    assert waived["observed"] == "path=/srv/.env, mode=0644"
    assert (
        "Waiver: owner alice, ticket OPS-1, expires 2999-01-01, reason: vault migration"
        in details_of(browser, "MIX-005")
    )
    skipped = row_of(browser, "MIX-004")
    assert skipped["outcome"] == "Not applicable\nthe inventory asks for nothing"
    unreachable = row_of(browser, "MIX-003")
    assert unreachable["outcome"].startswith("Could not evaluate\nunreachable: redis queue (")
    assert row_of(browser, "MIX-001")["observed"] == "3"
    page = browser.page_source
    assert "XFailed" not in browser.find_element("id", "results-table").text
    assert "('" not in browser.find_element("id", "results-table").text  # no Python tuple
    assert "Expected failures" not in page


def test_the_audit_summary_has_scope_counts_waivers_and_fixes_with_their_log_entries(
    browser: Any, fixed_run: Path
) -> None:
    load(browser, fixed_run / "report.html")
    from selenium.webdriver.common.by import By

    audit = browser.find_element(By.ID, "opsbook-audit").text
    assert "Selection\n-m daily" in audit
    assert "Deployment\nmixed" in audit
    assert "7 checks on 2 targets, 7 results" in audit
    # Per area and per severity: failed, could not evaluate, waived, fixed, not applicable, passed.
    assert "resources 1 0 0 0 0 0" in audit
    assert "critical 1 0 0 0 0 0" in audit
    waivers = browser.find_element(By.ID, "opsbook-waivers").text
    assert "MIX-005 - alice OPS-1 2999-01-01 vault migration in force waived" in waivers
    fixes = browser.find_element(By.ID, "opsbook-fixes").text
    line = next(line for line in fixes.splitlines() if line.startswith("MIX-007"))
    assert "fixes.heal_demo applied FIXED fixed #" in line, line


def test_a_failure_shows_its_linked_fix_without_remediate(
    browser: Any, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite = healing_suite(pytester, monkeypatch)
    assert suite.runpytest("-m", "daily").ret == 1
    load(browser, run_folder(suite) / "report.html")
    assert row_of(browser, "MIX-007")["outcome"] == "Failed"
    details = details_of(browser, "MIX-007")
    assert "Risk: the demo stays down until someone notices." in details
    assert "Fix: fixes.heal_demo (Create the demo's flag file.); not tried in this run" in details


def test_a_phone_needs_no_horizontal_scrolling(browser: Any, fixed_run: Path) -> None:
    load(browser, fixed_run / "report.html", width=PHONE_WIDTH)
    overflow = browser.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0


BLOCKING_CHECKS = '''
import pytest
from opsbook import Severity, check

pytestmark = [pytest.mark.daily]

@pytest.mark.queue
@check("BLK-001", Severity.CRITICAL)
def test_queue(redis_target):
    """The queue answers."""
    redis_target.client()  # a closed port: redis is down

@pytest.mark.health
@check("BLK-002", Severity.HIGH)
def test_backend(http_service, finding):
    """The backend answers."""
    finding.expect(503, "200", ok=False, problem="GET /health answered 503")
'''


def blocking_suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """Redis cannot be reached, and the backend, which depends on it, fails."""
    from test_findings_schema import closed_port

    pytester.makeini("[pytest]\naddopts = --strict-markers -p no:cacheprovider\n")
    port = closed_port()
    inventory = pytester.path / "inventory.yaml"
    inventory.write_text(
        f'name: blocking\nredis:\n  queue: {{url: "redis://127.0.0.1:{port}/0"}}\n'
        f'http:\n  backend: {{kind: backend, url: "http://127.0.0.1:{port}"}}\n'
        "services:\n  redis: {targets: [queue], role: queue}\n"
        "  backend: {targets: [backend], depends_on: [redis], role: api}\n"
    )
    monkeypatch.setenv("OPSBOOK_INVENTORY", str(inventory))
    monkeypatch.setenv("OPSBOOK_HOME", str(pytester.path))
    pytester.makepyfile(test_blocking=BLOCKING_CHECKS)
    return pytester


def test_a_blocked_row_names_its_cause(
    browser: Any, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite = blocking_suite(pytester, monkeypatch)
    suite.makeconftest('pytest_plugins = ["opsbook.plugin", "opsbook.fixtures.targets"]\n')
    assert suite.runpytest("-m", "daily").ret == 10
    load(browser, run_folder(suite) / "report.html")
    blocked = row_of(browser, "BLK-002")
    assert blocked["outcome"] == "Blocked\nby redis"
    assert "Blocked by: redis" in details_of(browser, "BLK-002")
    assert [row["check"] for row in rows(browser)] == ["BLK-001", "BLK-002"]


# What opsbook.plugin.dependencies does once every check ran: a failure whose cause turned out
# to be down is blocked by it. Done here as the session finishes, before pytest-html writes the
# page (the plugin would check a blocked row again, its cause being up).
SETTLED_LATE = """
import pytest
from opsbook.outcome import Outcome
from opsbook.plugin.keys import FINDINGS

pytest_plugins = ["opsbook.plugin", "opsbook.fixtures.targets"]

@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
    for row in session.config.stash[FINDINGS].rows.values():
        if row.check_id == "BLK-002":
            row.outcome, row.blocked_by = Outcome.BLOCKED, "redis"
            row.message = "blocked by redis: backend: GET /health answered 503 (expected 200)"
"""


def test_a_row_settled_after_it_was_drawn_is_drawn_again(
    browser: Any, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite = blocking_suite(pytester, monkeypatch)
    suite.makeconftest(SETTLED_LATE)
    suite.runpytest("-m", "daily", "-k", "backend")
    load(browser, run_folder(suite) / "report.html")
    blocked = row_of(browser, "BLK-002")
    assert blocked["outcome"] == "Blocked\nby redis"
    assert "Blocked by: redis" in details_of(browser, "BLK-002")
    from selenium.webdriver.common.by import By

    filters = browser.find_element(By.CSS_SELECTOR, ".filters").text
    assert "0 Failed" in filters
    assert "1 Not applicable or blocked" in filters


def test_a_green_run_says_passed(
    browser: Any, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite = mixed_suite(pytester, monkeypatch)
    assert suite.runpytest("-m", "daily", "-k", "test_passes").ret == 0
    load(browser, run_folder(suite) / "report.html")
    from selenium.webdriver.common.by import By

    verdict = browser.find_element(By.ID, "opsbook-verdict")
    assert verdict.text.splitlines() == ["PASSED", "1 passed"]
    assert "passed" in verdict.get_attribute("class").split()


def test_an_expired_waiver_says_so_and_the_failure_counts(
    browser: Any, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite = mixed_suite(pytester, monkeypatch)
    waivers = suite.path / "waivers.yaml"
    waivers.write_text(waivers.read_text().replace("2999-01-01", "2000-01-01"))
    assert suite.runpytest("-m", "daily", "-k", "test_waived").ret == 1
    load(browser, run_folder(suite) / "report.html")
    row = row_of(browser, "MIX-005")
    assert row["outcome"] == "Failed\nwaiver expired on 2000-01-01"
    assert (
        "Waiver: owner alice, ticket OPS-1, expires 2000-01-01, reason: vault migration "
        "(expired, so the failure counts)" in details_of(browser, "MIX-005")
    )
    from selenium.webdriver.common.by import By

    waivers_table = browser.find_element(By.ID, "opsbook-waivers").text
    assert "expired: the failure counts failed" in waivers_table


CAUSE_FIRST_CHECKS = '''
import pytest
from opsbook import Severity, check

pytestmark = [pytest.mark.daily]

@pytest.mark.queue
@check("BLK-001", Severity.MEDIUM)
def test_queue_depth(redis_target):
    """The queue's depth is known."""
    redis_target.client()  # a closed port: redis is down, though this check is only medium

@pytest.mark.health
@check("BLK-002", Severity.CRITICAL)
def test_backend(http_service, finding):
    """The backend answers."""
    finding.expect(503, "200", ok=False, problem="GET /health answered 503")

@pytest.mark.resources
@check("BLK-003", Severity.HIGH)
def test_disk(finding):
    """Disk use is below the limit."""
    finding.expect(93, "<= 80", ok=False, unit="%")

@pytest.mark.health
@check("BLK-004", Severity.LOW)
def test_fine(finding):
    """Something fine."""
    finding.expect(1, "1", ok=True)
'''


def test_a_cause_comes_first_by_the_worst_severity_it_blocks(
    browser: Any, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A medium check that cannot reach Redis blocks the critical backend check: the Redis row
    comes before a high failure of its own, with the backend's row right under it, indented."""
    suite = blocking_suite(pytester, monkeypatch)
    suite.makepyfile(test_blocking=CAUSE_FIRST_CHECKS)
    suite.makeconftest('pytest_plugins = ["opsbook.plugin", "opsbook.fixtures.targets"]\n')
    assert suite.runpytest("-m", "daily").ret == 1
    screenshot = load(browser, run_folder(suite) / "report.html")
    assert screenshot == run_folder(suite) / "screenshots" / "report-1280.png"
    assert screenshot.stat().st_size > 0
    shown = rows(browser)
    assert [(row["check"], row["outcome"]) for row in shown] == [
        ("BLK-001", f"Could not evaluate\n{shown[0]['outcome'].split(chr(10))[1]}\n"
                    "cause of 1 blocked below"),
        ("BLK-002", "Blocked\nby redis"),
        ("BLK-003", "Failed"),
        ("BLK-004", "Passed"),
    ]  # fmt: skip
    assert shown[0]["outcome"].split("\n")[1].startswith("unreachable: redis queue")
    assert under_its_cause(browser, "BLK-002", "BLK-001")
    assert not under_its_cause(browser, "BLK-003", "BLK-001")


def under_its_cause(browser: Any, check_id: str, cause_id: str) -> bool:
    """The row's outcome is drawn further right than its cause's (indented under it)."""
    script = """
        const left = (id) => {
          for (const cell of document.querySelectorAll('#results-table td.col-check')) {
            if (cell.textContent.trim() === id) {
              const outcome = cell.parentElement.querySelector('td.col-outcome .outcome');
              return outcome.getBoundingClientRect().left;
            }
          }
          return null;
        };
        return [left(arguments[0]), left(arguments[1])];
    """
    row, cause = browser.execute_script(script, check_id, cause_id)
    return bool(row > cause)


def test_with_redis_stopped_the_first_row_is_redis_and_what_it_blocks_sits_under_it(
    browser: Any, fresh_sandbox: Stack, run_checks: RunChecks, tmp_path: Path
) -> None:
    """A real sandbox of the test's own (the backend's errors about Redis would stay in the
    shared one's LOG-001 window), Redis stopped: report.html's first row is Redis's own failure (the
    cause), on the first screen; the backend's health check it blocks comes right after it,
    indented, saying "Blocked by redis"; the checks of Redis that could not be evaluated
    follow."""
    reports = tmp_path / "reports"
    fresh_sandbox.stop("redis")
    run = run_checks(reports=reports, inventory=fresh_sandbox.inventory_path)
    assert run.outcome("HEALTH-001", "backend") == "blocked", run.output
    folder = (reports / "latest").resolve()
    screenshot = load(browser, folder / "report.html")
    assert screenshot.parent == folder / "screenshots"
    shown = rows(browser)
    first = shown[0]
    cause = (first["check"], first["target"], first["severity"])
    assert cause == ("QUEUE-001", "queue", "critical"), [r["check"] for r in shown]
    assert first["outcome"].startswith("Failed\n"), first
    assert first["outcome"].endswith("blocked below"), first
    assert on_first_screen(browser, "#results-table tr.collapsible")
    blocked = [n for n, row in enumerate(shown) if row["outcome"].startswith("Blocked\n")]
    assert blocked == list(range(1, 1 + len(blocked))), [r["check"] for r in shown]
    assert ("HEALTH-001", "backend") in [(shown[n]["check"], shown[n]["target"]) for n in blocked]
    for n in blocked:
        assert shown[n]["outcome"] == "Blocked\nby redis", shown[n]
        assert under_its_cause(browser, shown[n]["check"], "QUEUE-001")
    assert "Blocked by: redis" in details_of(browser, "HEALTH-001")
