"""The status page (reports/<run>/status.html, `opsbook status --html FILE`) as a person sees it.

Rendered from findings.json alone; opened in headless Chromium (see test_html_report for how,
and when these tests skip). The run is test_html_report's: the mixed suite plus a check fixed
by its linked fix.
"""

from __future__ import annotations

import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_findings_schema import run_folder
from test_html_report import PHONE_WIDTH, healing_suite, load, open_chromium

from opsbook.pages import status_page


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
