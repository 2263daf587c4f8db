"""The status page (reports/<run>/status.html, `opsbook status --html FILE`) as a person sees it.

Rendered from findings.json alone; opened in headless Chromium (see test_html_report for how,
and when these tests skip). The run is test_html_report's: the mixed suite plus a check fixed
by its linked fix.
"""

from __future__ import annotations

import functools
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from html import escape
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from support import RunChecks
from test_findings_schema import run_folder
from test_html_report import PHONE_WIDTH, healing_suite, load, open_chromium

from opsbook.history import KeptRun
from opsbook.pages import run_strip, status_page
from opsbook.sandbox.stack import Stack


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    driver = open_chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A finished mixed run with --remediate=apply; its folder."""
    suite = healing_suite(pytester, monkeypatch)
    assert suite.runpytest("-m", "daily", "--remediate=apply").ret == 1
    return run_folder(suite)


def table(browser: Any, element_id: str) -> list[str]:
    """A table's data rows as their text, cells separated by single spaces."""
    from selenium.webdriver.common.by import By

    rows = browser.find_elements(By.CSS_SELECTOR, f"#{element_id} tr")[1:]
    return [
        " ".join(cell.text for cell in row.find_elements(By.CSS_SELECTOR, "td")) for row in rows
    ]


def test_each_run_writes_a_status_page_that_says_the_verdict_first(browser: Any, run: Path) -> None:
    page = run / "status.html"
    assert stat.S_IMODE(page.stat().st_mode) == 0o640
    load(browser, page)
    from selenium.webdriver.common.by import By

    first = browser.execute_script("return document.querySelector('h1').nextElementSibling.id")
    assert first == "verdict"
    assert browser.find_element(By.ID, "verdict").text.splitlines() == [
        "FAILED",
        "1 failed; 2 could not evaluate; 1 waived; 1 fixed; 1 not applicable; 1 passed",
    ]
    # Each area and target by its worst outcome, worst first.
    areas = table(browser, "areas")
    assert areas[0] == "resources failed 1 failed"
    assert [line.split()[0] for line in areas] == [
        "resources", "database", "queue", "security", "health",
    ]  # fmt: skip
    assert areas[-1] == "health fixed 1 fixed; 1 not applicable; 1 passed"
    assert [line.split()[0] for line in table(browser, "targets")] == ["mixed", "chatdb", "queue"]
    # What needs a person, with its values' units.
    attention = table(browser, "attention")
    assert attention[0] == (
        "failed MIX-002 critical mixed Disk use is below the limit.\n"
        "mixed: 93.5 % (expected <= 80 %) 93.5 % <= 80 %"
    )
    assert len(attention) == 3
    every = table(browser, "findings")
    waived = next(line for line in every if "MIX-005" in line)
    assert "waiver: alice, OPS-1, until 2999-01-01: vault migration" in waived
    assert "path=/srv/.env, mode=0644" in waived


def test_the_status_page_needs_no_script_and_keeps_evidence_and_secrets_out(run: Path) -> None:
    html = (run / "status.html").read_text()
    assert "<script" not in html.lower()
    assert "src=" not in html  # self-contained
    assert "href=" not in html
    assert "secret-evidence-never-on-the-status-page" not in html
    assert "secret-evidence-never-on-the-status-page" in (run / "findings.json").read_text()
    assert "not-used" not in html  # the inventory's password
    assert "touch " not in html  # a fix's plan


def test_a_phone_needs_no_horizontal_scrolling(browser: Any, run: Path) -> None:
    load(browser, run / "status.html", width=PHONE_WIDTH)
    overflow = browser.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0


def status(reports: Path, page: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "opsbook", "status", "--reports-dir", str(reports), "--html",
         str(page)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_opsbook_status_html_writes_the_same_page_and_exits_critical(
    run: Path, tmp_path: Path
) -> None:
    page = tmp_path / "status.html"
    done = status(run.parent, page)
    assert done.returncode == 2, done.stderr
    assert done.stdout.startswith("opsbook status: CRITICAL - mixed")
    assert page.read_text() == (run / "status.html").read_text()
    assert stat.S_IMODE(page.stat().st_mode) == 0o640


def test_without_a_run_the_page_says_unknown_and_why(tmp_path: Path) -> None:
    page = tmp_path / "status.html"
    done = status(tmp_path / "reports", page)
    assert done.returncode == 3
    html = page.read_text()
    assert '<span class="headline">UNKNOWN</span>' in html
    assert "no finished run under" in html


def test_a_page_that_cannot_be_written_is_one_line(run: Path, tmp_path: Path) -> None:
    done = status(run.parent, tmp_path / "missing-folder" / "status.html")
    assert done.returncode == 3
    assert done.stderr.strip().splitlines() == [
        f"status: cannot write the page {tmp_path / 'missing-folder' / 'status.html'}: "
        "No such file or directory"
    ]


def row(deployment: str, target: str, outcome: str, severity: str = "high") -> dict[str, Any]:
    return {
        "check_id": "QUEUE-001", "title": "The queue answers.", "target": target,
        "deployment": deployment, "markers": ["daily", "queue"], "severity": severity,
        "outcome": outcome, "message": "", "observed": 1.5, "unit": "s", "expected": "<= 1",
    }  # fmt: skip


def test_a_merged_document_keeps_its_deployments_apart() -> None:
    """Shards or deployments merged into one findings.json make one page."""
    document = {
        "run": {"run_id": "0123abcd", "inventory": "fleet", "counts": {}},
        "findings": [row("eu", "queue", "passed"), row("us", "queue", "failed")],
    }
    html = status_page.render(document)
    assert html.index("<td>us/queue</td>") < html.index("<td>eu/queue</td>")
    assert '<span class="headline">FAILED</span>' in html  # counted from the rows
    assert '<td data-label="observed">1.5 s</td><td data-label="expected">&lt;= 1 s</td>' in html


def test_what_a_target_answered_is_escaped() -> None:
    document = {"run": {}, "findings": [row("eu", "<img src=x onerror=alert(1)>", "failed")]}
    html = status_page.render(document)
    assert "<img" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


@pytest.mark.parametrize(
    ("counts", "gaps", "headline"),
    [
        pytest.param({"failed": 1, "error": 1}, 1, "FAILED", id="a-failure-wins"),
        pytest.param({"error": 1, "passed": 2}, 1, "AUDIT TRAIL INCOMPLETE", id="then-the-trail"),
        pytest.param({"blocked": 1, "passed": 2}, 0, "COULD NOT EVALUATE", id="blocked"),
        pytest.param({"waived": 1, "fixed": 1, "skipped": 1}, 0, "PASSED", id="green"),
        pytest.param({}, 0, "NO CHECKS", id="nothing"),
    ],
)
def test_the_verdict_is_the_exit_codes_in_words(
    counts: dict[str, int], gaps: int, headline: str
) -> None:
    from opsbook.pages.present import verdict

    assert verdict(counts, gaps).headline == headline


def test_the_counts_are_said_worst_first() -> None:
    from opsbook.pages.present import verdict

    counts = {"passed": 3, "skipped": 1, "fixed": 1, "waived": 1, "blocked": 1, "error": 2}
    assert verdict({**counts, "failed": 1}).counts == (
        "1 failed; 2 could not evaluate; 1 blocked; 1 waived; 1 fixed; 1 not applicable; 3 passed"
    )


# The page across runs (reports/status.html, opsbook.pages.run_strip).

# The daily health checks; not OBS-004, whose window of real traffic keeps the broken run's own
# errors (nginx's 502s) into the third run.
HEALTH = ("-m", "daily and health and not observability")
RED = "rgba(176, 42, 55, 1)"
GREEN = "rgba(30, 126, 52, 1)"


def strip(browser: Any, table_id: str, group: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(
        browser.find_elements(By.CSS_SELECTOR, f'#{table_id} tr[data-group="{group}"] .strip a')
    )


@contextmanager
def static_web_server(folder: Path) -> Iterator[str]:
    """Python's own static file server over the reports folder: the page's links must work
    from any web server, not only from the file system."""
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_the_page_across_runs_shows_each_run_in_its_strip_trends_and_links(
    breakable_sandbox: Stack, run_checks: RunChecks, browser: Any, tmp_path: Path
) -> None:
    """Green, the backend stopped, green again: the backend's and health's strips are green,
    red, green, each cell a link to its run's report."""
    from selenium.webdriver.common.by import By

    reports = tmp_path / "reports"
    screenshots = reports / "screenshots"
    screenshots.mkdir(parents=True)
    first = run_checks(*HEALTH, reports=reports)
    assert first.exit_code == 0, first.output
    breakable_sandbox.stop("backend")
    try:
        broken = run_checks(*HEALTH, reports=reports)
    finally:
        breakable_sandbox.start("backend")
    assert broken.outcome("HEALTH-001", "backend") == "failed", broken.output
    again = run_checks(*HEALTH, reports=reports)
    assert again.exit_code == 0, again.output
    runs = [first, broken, again]

    page = reports / "status.html"
    assert stat.S_IMODE(page.stat().st_mode) == 0o640
    html = page.read_text()
    assert "<script" not in html.lower()
    assert "src=" not in html  # self-contained: no external style, image or script
    load(browser, page)
    browser.set_window_size(1200, 1600)
    browser.save_screenshot(str(screenshots / "status-desktop.png"))
    assert browser.find_element(By.ID, "verdict").text.splitlines()[0] == "PASSED"
    for table_id, group in (("targets", "backend"), ("areas", "health")):
        cells = strip(browser, table_id, group)
        assert [c.get_attribute("data-outcome") for c in cells] == ["passed", "failed", "passed"]
        assert [c.value_of_css_property("background-color") for c in cells] == [GREEN, RED, GREEN]
        # Each cell's title is its run's time; the newest is the right-most.
        assert [c.get_attribute("title") for c in cells] == [
            f"{run_strip.when(run.document)}: {word}"
            for run, word in zip(runs, ("passed", "failed", "passed"), strict=True)
        ]
        lefts = [c.rect["x"] for c in cells]
        assert lefts == sorted(lefts)
        row = browser.find_element(By.CSS_SELECTOR, f'#{table_id} tr[data-group="{group}"]')
        assert row.text.split()[:2] == [group, "passed"]
    # A trend chart of a measured value: /health's answer time, an SVG line with a point per
    # run that measured it (the broken run had no answer to time).
    trend = browser.find_element(By.XPATH, '//table[@id="trends"]//tr[td[1]="HEALTH-002"]'
                                           '[td[2]="backend"]')  # fmt: skip
    polyline = trend.find_element(By.CSS_SELECTOR, "svg polyline")
    assert len(polyline.get_attribute("points").split()) == 2
    assert trend.find_element(By.CSS_SELECTOR, "svg").size["width"] > 0
    # The runs' list, newest first, and each strip cell opens its run's report.
    hrefs = [c.get_attribute("href") for c in strip(browser, "targets", "backend")]
    listed = browser.find_elements(By.CSS_SELECTOR, "#runs tr td:first-child")
    assert [c.text for c in listed] == [run_strip.when(r.document) for r in reversed(runs)]
    for href, run, headline in zip(hrefs, runs, ("PASSED", "FAILED", "PASSED"), strict=True):
        browser.get(href)
        verdict = browser.find_element(By.ID, "opsbook-verdict").text.splitlines()[0]
        assert verdict == headline
        assert run.document["run"]["run_id"] in browser.page_source
    # Relative links: the same page served by a static web server.
    with static_web_server(reports) as site:
        browser.get(f"{site}/status.html")
        middle = strip(browser, "targets", "backend")[1]
        assert middle.get_attribute("href").startswith(f"{site}/")
        middle.click()
        assert browser.find_element(By.ID, "opsbook-verdict").text.startswith("FAILED")
    # A phone: no horizontal scrolling; the strip stays in the row's card.
    load(browser, page, width=PHONE_WIDTH)
    overflow = browser.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(PHONE_WIDTH, min(height + 200, 8000))
    browser.save_screenshot(str(screenshots / "status-phone.png"))
    assert all(c.is_displayed() for c in strip(browser, "targets", "backend"))


def kept(name: str, started: str, rows: list[dict[str, Any]]) -> KeptRun:
    document = {"run": {"run_id": name, "started": started, "inventory": "fleet"}, "findings": rows}
    return KeptRun(f"20261201T0000{name}Z-{name}", document)


def test_the_page_across_runs_is_made_from_findings_alone_and_escapes_what_targets_said() -> None:
    """A target missing from a run has an empty cell; a name a target sent is escaped."""
    odd = "<img src=x onerror=alert(1)>"
    runs = [
        kept("01", "2026-12-01T00:01:00+00:00", [row("eu", "queue", "passed")]),
        kept("02", "2026-12-01T00:02:00+00:00", [row("eu", odd, "failed")]),
        kept("03", "2026-12-01T00:03:00+00:00", [row("eu", "queue", "error")]),
    ]
    html = run_strip.render(runs, lambda run: ("report.html", "findings.json"))
    assert "<img" not in html
    assert "<script" not in html.lower()
    assert 'href="20261201T000001Z-01/report.html"' in html  # relative to the reports folder
    assert 'href="/' not in html
    assert "://" not in html.replace("http://www.w3.org/2000/svg", "")
    targets = html[html.index('id="targets"') :]
    queue = targets[targets.index('<tr data-group="queue">') :]
    queue = queue[: queue.index("</tr>")]
    assert [part.split('"')[0] for part in queue.split('data-outcome="')[1:]] == [
        "passed", "none", "error",
    ]  # fmt: skip
    assert "2026-12-01 00:02:00 UTC: not checked" in queue
    assert f'<tr data-group="{escape(odd)}">' in html  # a target gone from the newest run


def problem(
    check_id: str, severity: str, outcome: str, services: list[str], **more: Any
) -> dict[str, Any]:
    return {
        "check_id": check_id, "title": f"{check_id} holds.", "target": services[0],
        "deployment": "sandbox", "markers": ["daily"], "severity": severity,
        "outcome": outcome, "message": more.pop("message", ""), "services": services, **more,
    }  # fmt: skip


def test_a_blocked_row_is_under_its_cause_and_causes_go_by_what_they_block() -> None:
    """A medium check of Redis that could not reach it blocks a critical check of the backend:
    Redis's row comes first, before a high failure that blocks nothing, and the backend's sits
    right under it; a blocked row whose cause has no row (an earlier findings.json) stays
    where its severity puts it."""
    rows = [
        problem("RES-001", "high", "failed", ["host"]),
        problem("HEALTH-001", "critical", "blocked", ["backend"], blocked_by="redis",
                message="blocked by redis: backend: GET /health answered 503"),
        problem("QUEUE-003", "medium", "error", ["redis"], message="unreachable: redis queue"),
        problem("OBS-002", "low", "blocked", ["prometheus"], blocked_by="grafana"),
        problem("DB-001", "critical", "passed", ["postgres"]),
    ]  # fmt: skip
    html = status_page.render({"run": {}, "findings": rows})
    attention = html.split('id="attention"', 1)[1].split("</table>", 1)[0]
    order = [check for check in ("QUEUE-003", "HEALTH-001", "RES-001", "OBS-002")
             if f"<td data-label=\"check\">{check}</td>" in attention]  # fmt: skip
    assert sorted(order, key=attention.index) == ["QUEUE-003", "HEALTH-001", "RES-001", "OBS-002"]
    lines = [line for line in attention.split("<tr") if "data-label" in line]
    assert [line.startswith(' class="under"') for line in lines] == [False, True, False, False]
    assert "blocked by redis" in lines[1]


def test_with_redis_stopped_what_needs_a_person_starts_with_redis_and_what_it_blocks(
    browser: Any, fresh_sandbox: Stack, run_checks: RunChecks, tmp_path: Path
) -> None:
    """A real sandbox of the test's own (the backend's errors about Redis would stay in the
    shared one's LOG-001 window), Redis stopped: the run's status page lists Redis's own
    failure first among what needs a person, and the backend's health check it blocks right
    under it, indented."""
    reports = tmp_path / "reports"
    fresh_sandbox.stop("redis")
    run = run_checks(reports=reports, inventory=fresh_sandbox.inventory_path)
    assert run.outcome("HEALTH-001", "backend") == "blocked", run.output
    folder = (reports / "latest").resolve()
    load(browser, folder / "status.html")
    attention = table(browser, "attention")
    assert attention[0].startswith("failed QUEUE-001 critical queue Redis answers PING."), attention
    assert attention[1].startswith("blocked HEALTH-001 critical backend "), attention
    assert "blocked by redis" in attention[1]
    from selenium.webdriver.common.by import By

    first, second = browser.find_elements(By.CSS_SELECTOR, "#attention tr")[1:3]
    assert second.get_attribute("class") == "under"
    assert first.get_attribute("class") == ""
    # The bar and the indent: the blocked row's outcome starts further right than its cause's.
    lefts = [row.find_element(By.CSS_SELECTOR, ".outcome").rect["x"] for row in (first, second)]
    assert lefts[1] > lefts[0]


def test_every_run_rewrites_the_page_across_runs_of_its_selection(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite = healing_suite(pytester, monkeypatch)
    reports = suite.path / "reports"
    suite.runpytest("-m", "daily")
    first = run_folder(suite)
    suite.runpytest("-m", "daily")
    second = run_folder(suite)
    suite.runpytest("-m", "daily and health")  # another selection: its own strip
    page = reports / "status.html"
    assert stat.S_IMODE(page.stat().st_mode) == 0o640
    assert 'data-group="health"' in page.read_text()
    assert f'href="{first.name}/report.html"' not in page.read_text()
    suite.runpytest("-m", "daily")
    third = run_folder(suite)
    html = page.read_text()
    links = [f'href="{folder.name}/report.html"' for folder in (first, second, third)]
    assert all(link in html for link in links)
    assert all((folder / "report.html").is_file() for folder in (first, second, third))
    health = html[html.index('<tr data-group="health">') :]
    assert health[: health.index("</tr>")].count('data-outcome="') == 3
    assert not list(reports.glob(".status.html.*"))  # no temporary file left


def test_over_several_deployments_a_blocked_row_goes_under_its_own_deployments_cause() -> None:
    """A page over several deployments: the cause is the row of the blocked row's deployment."""
    rows = [
        problem("QUEUE-001", "critical", "failed", ["redis"], deployment="eu"),
        problem("QUEUE-001", "critical", "failed", ["redis"], deployment="us"),
        problem("HEALTH-001", "critical", "blocked", ["backend"], blocked_by="redis",
                deployment="us"),
    ]  # fmt: skip
    from opsbook.pages.present import cause_first

    assert [
        (rows[i]["deployment"], rows[i]["check_id"], depth) for i, depth in cause_first(rows)
    ] == [
        ("us", "QUEUE-001", 0),
        ("us", "HEALTH-001", 1),
        ("eu", "QUEUE-001", 0),
    ]
