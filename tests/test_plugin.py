"""The plugin, tested through real pytest runs (pytester): collection lint, outcomes, reports.

Unreachable targets here are closed loopback ports; the sandbox tests cover live targets.
"""

from __future__ import annotations

import gc
import json
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from support import fill

CANARY = "canary-Secret-9f8e7d"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """An opsbook suite in a temporary folder, with an inventory of closed ports."""
    pytester.makeini("[pytest]\naddopts = --strict-markers -p no:cacheprovider\n")
    pytester.makeconftest('pytest_plugins = ["opsbook.plugin", "opsbook.fixtures.targets"]\n')
    monkeypatch.setenv("CANARY_PASSWORD", CANARY)
    monkeypatch.delenv("OPSBOOK_INVENTORY", raising=False)
    monkeypatch.delenv("OPSBOOK_SANDBOX_DIR", raising=False)
    port = closed_port()
    (pytester.path / "inventory.yaml").write_text(
        f"""
name: test
postgres:
  chatdb: {{port: {port}, password: {{env: CANARY_PASSWORD}}}}
redis:
  queue: {{url: "redis://127.0.0.1:{port}/0", password: {{env: CANARY_PASSWORD}}}}
"""
    )
    monkeypatch.setenv("OPSBOOK_INVENTORY", str(pytester.path / "inventory.yaml"))
    return pytester


def latest(pytester: pytest.Pytester) -> Path:
    return (pytester.path / "reports" / "latest").resolve()


def findings(pytester: pytest.Pytester) -> dict:
    return json.loads((latest(pytester) / "findings.json").read_text())


CHECKS = '''
import pytest
from opsbook import Severity, check

pytestmark = [pytest.mark.daily, pytest.mark.health]

@check("DEMO-001", Severity.HIGH)
def test_passes(finding):
    """Demo passes."""
    finding.observe(3, expected="<= 5")

@check("DEMO-002", Severity.LOW)
def test_fails(finding):
    """Demo fails with observed vs expected.

    Risk: nothing, it is a demo.
    """
    finding.observe(7, expected="<= 5")
    finding.attach("rows", [["a", 1]])
    assert 7 <= 5, "demo: depth is 7 (max 5)"
'''


def test_findings_json_and_junit_carry_each_check(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_demo=CHECKS)
    result = suite.runpytest("-m", "daily")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*opsbook report: *report.html*"])
    document = findings(suite)
    assert document["run"]["exit_code"] == 1
    assert document["run"]["counts"] == {"passed": 1, "failed": 1}
    by_id = {row["check_id"]: row for row in document["findings"]}
    failed = by_id["DEMO-002"]
    assert failed["outcome"] == "failed"
    assert failed["message"] == "demo: depth is 7 (max 5)"
    assert failed["observed"] == 7
    assert failed["expected"] == "<= 5"
    assert failed["title"] == "Demo fails with observed vs expected."
    assert failed["markers"] == ["daily", "health"]
    assert json.loads(failed["evidence"]["rows"]) == [["a", 1]]
    assert by_id["DEMO-001"]["outcome"] == "passed"
    # The high-severity check sorts first.
    assert [row["check_id"] for row in document["findings"]] == ["DEMO-001", "DEMO-002"]
    junit = ET.parse(latest(suite) / "junit.xml")
    properties = {
        p.get("name"): p.get("value")
        for p in junit.iter("property")
        if p.get("name") in ("check_id", "severity")
    }
    assert properties  # JUnit carries the check's properties
    html = (latest(suite) / "report.html").read_text()
    assert "DEMO-002" in html


def test_a_failed_check_is_one_line_not_a_traceback(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_demo=CHECKS)
    result = suite.runpytest("-m", "daily")
    failures = result.stdout.str().split("= FAILURES =")[1].split("short test summary")[0]
    assert "demo: depth is 7 (max 5)" in failures
    assert "assert 7 <= 5" not in failures


def test_unreachable_target_is_an_error_with_one_line(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_db='''
import pytest
from opsbook import Severity, check

pytestmark = pytest.mark.daily

@check("DB-101", Severity.HIGH)
def test_one(postgres):
    """Needs the database."""

@check("DB-102", Severity.HIGH)
def test_two(postgres):
    """Needs the database too."""
'''
    )
    result = suite.runpytest("-m", "daily")
    assert result.ret == 10, "nothing failed, but nothing could be evaluated"
    result.assert_outcomes(errors=2)
    output = result.stdout.str()
    assert "Traceback" not in output
    assert "psycopg" not in output
    errors = output.split("= ERRORS =")[1].split("- generated xml")[0]
    assert errors.count("unreachable: postgres chatdb") == 2, "one line per check"
    result.stdout.fnmatch_lines(["*unreachable: postgres chatdb*(2 checks not evaluated)"])
    rows = findings(suite)["findings"]
    assert {row["outcome"] for row in rows} == {"error"}
    assert all(row["unreachable"] for row in rows)


def test_exit_codes_pass_and_no_checks(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_ok='''
import pytest
from opsbook import Severity, check

@pytest.mark.daily
@check("OK-001", Severity.INFO)
def test_ok():
    """Always fine."""
'''
    )
    assert suite.runpytest("-m", "daily").ret == 0
    published = sorted((suite.path / "reports").iterdir())
    nothing = suite.runpytest("-m", "weekly")
    assert nothing.ret == 5
    # No report is written for no check, and none is announced.
    assert sorted((suite.path / "reports").iterdir()) == published
    assert "generated" not in nothing.stdout.str().lower()


def test_a_run_collects_garbage_rarely_and_then_puts_the_defaults_back(
    suite: pytest.Pytester,
) -> None:
    suite.makepyfile(
        test_gc="""
import gc
import pytest
from opsbook import Severity, check

@pytest.mark.daily
@check("GC-001", Severity.INFO)
def test_threshold():
    \"\"\"Collected every 100,000 allocations.\"\"\"
    assert gc.get_threshold()[0] == 100_000
    assert gc.get_freeze_count() > 0
"""
    )
    before = gc.get_threshold()
    assert suite.runpytest("-m", "daily").ret == 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


OK_CHECK = '''
import pytest
from opsbook import Severity, check

@pytest.mark.daily
@check("OK-001", Severity.INFO)
def test_ok():
    """Always fine."""
'''


def test_a_reports_folder_that_cannot_be_made_is_one_line(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_ok=OK_CHECK)
    not_a_folder = suite.path / "a-file"
    not_a_folder.write_text("")
    result = suite.runpytest("-m", "daily", f"--reports-dir={not_a_folder}")
    assert result.ret == 4
    result.stderr.fnmatch_lines([f"ERROR: reports folder {not_a_folder}: Not a directory (*"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_on_a_full_disk_the_verdict_stands_and_says_the_reports_are_missing(
    suite: pytest.Pytester, small_filesystem: Path
) -> None:
    """The moment a daily run matters most: the disk check fails because the disk is full."""
    reports = small_filesystem / "reports"
    reports.mkdir()
    fill(small_filesystem)
    suite.makepyfile(test_ok=OK_CHECK)
    result = suite.runpytest("-m", "daily", f"--reports-dir={reports}")
    assert result.ret == 11
    result.stdout.fnmatch_lines(
        ["*not in the audit trail*", f"the run's reports, in {reports}: No space left on device"]
    )
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    assert list(reports.iterdir()) == []  # nothing half-written left behind

    suite.makepyfile(test_demo=CHECKS)  # one of them fails: that stays the exit code
    result = suite.runpytest("-m", "daily", f"--reports-dir={reports}")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*depth is 7 (max 5)*", "the run's reports, in *"])


SLOW_CHECKS = """
import pathlib, time
import pytest
from opsbook import Severity, check

pytestmark = pytest.mark.daily

@check("FAST-001", Severity.INFO)
def test_fast():
    \"\"\"Fast.\"\"\"

@check("SLOW-001", Severity.INFO)
def test_slow():
    \"\"\"Slow.\"\"\"
    pathlib.Path("started").touch()
    time.sleep(float(pathlib.Path("sleep").read_text()))

@check("NEXT-001", Severity.INFO)
def test_next():
    \"\"\"Next.\"\"\"
"""


def interrupted_run(suite: pytest.Pytester, how: signal.Signals, sleep_s: float) -> bytes:
    """Run SLOW_CHECKS, send `how` while SLOW-001 runs; the run must end with code 2."""
    (suite.path / "sleep").write_text(str(sleep_s))
    (suite.path / "started").unlink(missing_ok=True)
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "daily"]
    run = suite.popen(command, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (suite.path / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    run.send_signal(how)
    out, _ = run.communicate(timeout=60)
    assert run.returncode == 2, out
    assert findings(suite)["run"]["exit_code"] == 2
    return out


def test_sigterm_stops_the_run_after_the_running_check_and_reports_it(
    suite: pytest.Pytester,
) -> None:
    """What cron's `timeout`, systemd or a CI cancel send: the running check ends cleanly."""
    suite.makepyfile(test_slow=SLOW_CHECKS)
    out = interrupted_run(suite, signal.SIGTERM, 2)
    assert b"terminated (SIGTERM): stopped after the check that was running" in out
    outcomes = {row["check_id"]: row["outcome"] for row in findings(suite)["findings"]}
    assert outcomes == {"FAST-001": "passed", "SLOW-001": "passed"}  # NEXT-001 never started


def test_a_check_cut_off_by_ctrl_c_is_not_recorded_as_passed(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_slow=SLOW_CHECKS)
    interrupted_run(suite, signal.SIGINT, 60)
    rows = {row["check_id"]: row for row in findings(suite)["findings"]}
    assert rows["FAST-001"]["outcome"] == "passed"
    assert (rows["SLOW-001"]["outcome"], rows["SLOW-001"]["message"]) == (
        "error",
        "did not finish: the run was interrupted",
    )
    assert "NEXT-001" not in rows


def test_only_the_pytest_command_leaves_the_run_frozen_for_a_fast_exit(
    pytester: pytest.Pytester,
) -> None:
    """Frozen objects are not walked at the interpreter's exit; a caller of pytest.main()
    gets everything unfrozen back (the in-process test above)."""
    pytester.makepyfile(
        test_program="""
from opsbook.plugin import started_by_the_pytest_command

def test_command():
    assert started_by_the_pytest_command()
"""
    )
    assert pytester.runpytest_subprocess("-p", "no:cacheprovider").ret == 0
    assert pytester.runpytest_inprocess("-p", "no:cacheprovider").ret == 1


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ('@check("bad id", Severity.LOW)\ndef test_x():\n    """T."""', "is not like AREA-001"),
        ('@check("X-001", Severity.LOW)\ndef test_x():\n    pass', "needs a docstring"),
        ('@check("X-001", "high")\ndef test_x():\n    """T."""', "must be a Severity"),
        (
            '@check("X-001", Severity.LOW)\ndef test_x():\n    """T."""\n'
            '@check("X-001", Severity.LOW)\ndef test_y():\n    """T."""',
            "already used by",
        ),
    ],
    ids=["id-format", "no-docstring", "severity-type", "duplicate-id"],
)
def test_invalid_checks_are_rejected_at_collection(
    suite: pytest.Pytester, source: str, problem: str
) -> None:
    suite.makepyfile(
        test_bad="import pytest\nfrom opsbook import Severity, check\n"
        "pytestmark = pytest.mark.daily\n" + source
    )
    result = suite.runpytest_subprocess("--collect-only")
    assert result.ret == 4
    assert problem in result.stderr.str()


def test_a_check_without_cadence_marker_is_rejected(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_bad="from opsbook import Severity, check\n"
        '@check("X-001", Severity.LOW)\ndef test_x():\n    """T."""\n'
    )
    result = suite.runpytest_subprocess()
    assert result.ret == 4
    assert "no cadence marker" in result.stderr.str()


def test_unknown_markers_are_rejected(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_bad="import pytest\n@pytest.mark.dayly\ndef test_x():\n    pass\n")
    result = suite.runpytest()
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*'dayly' not found in `markers` configuration option*"])


BAD_INVENTORIES = {
    "not-yaml": ("name: [unclosed", "not valid YAML: "),
    "not-a-mapping": ("- just\n- a list", "expected a mapping"),
    "unknown-key": ("name: x\npostgress: {}", "postgress: unknown key"),
    "bad-port": ("name: x\npostgres:\n  db: {port: 70000}", "postgres.db.port"),
    "inline-secret": ("name: x\npostgres:\n  db: {password: hunter2}", "by reference"),
    "missing-env": (
        "name: x\npostgres:\n  db: {password: {env: NOPE_NOT_SET}}",
        "NOPE_NOT_SET is not set",
    ),
    "password-in-url": (
        'name: x\nredis:\n  q: {url: "redis://u:pw@127.0.0.1:1/0"}',
        "redis.q.url: the URL holds a password",
    ),
    "bad-threshold": ("name: x\nthresholds: {disk_used_percent: 180}", "disk_used_percent"),
}


@pytest.mark.parametrize("name", sorted(BAD_INVENTORIES))
def test_bad_inventory_exits_4_with_one_line(suite: pytest.Pytester, name: str) -> None:
    text, expected = BAD_INVENTORIES[name]
    path = suite.path / "bad.yaml"
    path.write_text(text)
    result = suite.runpytest_subprocess(f"--inventory={path}")
    assert result.ret == 4
    lines = [line for line in result.stderr.lines if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"ERROR: inventory {path}: ")
    assert expected in lines[0]
    assert not (suite.path / "reports").exists() or not any((suite.path / "reports").iterdir())


def test_missing_inventory_file_is_a_usage_error(suite: pytest.Pytester) -> None:
    result = suite.runpytest_subprocess("--inventory=/nonexistent/inventory.yaml")
    assert result.ret == 4
    assert "no such file" in result.stderr.str()


def test_checks_without_any_inventory_is_a_usage_error(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPSBOOK_INVENTORY")
    suite.makepyfile(test_demo=CHECKS)
    result = suite.runpytest_subprocess("-m", "daily")
    assert result.ret == 4
    assert "no inventory" in result.stderr.str()


def test_environment_overrides_the_inventory(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPSBOOK__THRESHOLDS__QUEUE_BACKLOG", "7")
    suite.makepyfile(
        test_t='''
import pytest
from opsbook import Severity, check

@pytest.mark.daily
@check("T-001", Severity.LOW)
def test_t(thresholds, finding):
    """Backlog threshold comes from the environment."""
    finding.observe(thresholds.queue_backlog)
    assert thresholds.queue_backlog == 7
'''
    )
    assert suite.runpytest().ret == 0


def test_secrets_never_reach_outputs(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_leak='''
import pytest
from opsbook import Severity, check

@pytest.mark.daily
@check("LEAK-001", Severity.HIGH)
def test_leak(inventory, finding):
    """A check that handles the secret."""
    secret = inventory.postgres["chatdb"].password.reveal()
    dsn = f"postgresql://app:{secret}@db/chatdb"
    print("connecting with", dsn)
    finding.attach("dsn", dsn)
    finding.observe(secret)
    assert secret == "x", f"login failed with {secret}"
'''
    )
    result = suite.runpytest_subprocess("--showlocals", "-rA")
    assert result.ret == 1
    assert CANARY not in result.stdout.str() + result.stderr.str()
    for path in latest(suite).iterdir():
        assert CANARY not in path.read_text(), path.name
    assert "***" in (latest(suite) / "findings.json").read_text()


def test_reports_are_published_whole(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_demo=CHECKS)
    suite.runpytest("-m", "daily")
    first = latest(suite)
    suite.runpytest("-m", "daily")
    second = latest(suite)
    reports = suite.path / "reports"
    assert first != second
    assert first.parent == second.parent == reports
    assert sorted(p.name for p in second.iterdir()) == [
        "findings.json", "junit.xml", "report.html", "status.html",
    ]  # fmt: skip
    assert not [p for p in reports.iterdir() if p.name.startswith(".")], "no staging left"


def test_a_run_without_checks_writes_no_report(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_plain="def test_plain():\n    pass\n")
    assert suite.runpytest().ret == 0
    assert not (suite.path / "reports").exists() or not list((suite.path / "reports").iterdir())


WAIVED_CHECK = '''
import pytest
from opsbook import Severity, check

@pytest.mark.audit
@check("SEC-901", Severity.HIGH)
def test_env_file_mode(finding):
    """Secret files are private."""
    finding.observe("0644", expected="0600 or stricter")
    assert False, "local: /srv/.env has mode 0644 (expected 0600 or stricter)"
'''


def _waivers(suite: pytest.Pytester, expires: str) -> None:
    (suite.path / "waivers.yaml").write_text(
        "waivers:\n"
        "  - {check: SEC-901, owner: alice, reason: vault migration, ticket: OPS-1,"
        f" expires: {expires}}}\n"
    )


def test_a_waived_failure_is_reported_as_waived(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_waived=WAIVED_CHECK)
    _waivers(suite, "2999-01-01")
    result = suite.runpytest("-m", "audit", "-rx")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["XFAIL*waived: alice, OPS-1, until 2999-01-01: vault migration"])
    (row,) = findings(suite)["findings"]
    assert row["outcome"] == "waived"
    assert row["waiver"] == "alice, OPS-1, until 2999-01-01: vault migration"
    assert row["message"] == "local: /srv/.env has mode 0644 (expected 0600 or stricter)"


def test_an_expired_waiver_counts_as_a_failure(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_waived=WAIVED_CHECK)
    _waivers(suite, "2020-01-01")
    result = suite.runpytest("-m", "audit")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*waiver expired on 2020-01-01: alice, OPS-1*"])
    (row,) = findings(suite)["findings"]
    assert row["outcome"] == "failed"
    assert row["waiver"].startswith("expired: ")


def test_a_bad_waivers_file_exits_4_with_one_line(suite: pytest.Pytester) -> None:
    (suite.path / "waivers.yaml").write_text("waivers:\n  - {check: SEC-901, owner: a}\n")
    result = suite.runpytest_subprocess()
    assert result.ret == 4
    lines = [line for line in result.stderr.lines if line.strip()]
    assert len(lines) == 1
    assert "waivers[0].reason: required" in lines[0]


FLIPPING_CHECK = '''
import os
import pytest
from opsbook import Severity, check

@pytest.mark.daily
@check("FLIP-001", Severity.MEDIUM)
def test_flip(finding):
    """Flips with the environment."""
    depth = int(os.environ["DEPTH"])
    finding.observe(depth, expected="<= 5")
    assert depth <= 5, f"depth is {depth} (max 5)"
'''


def test_history_names_newly_failing_recovered_flapping_and_trends(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite.makepyfile(test_flip=FLIPPING_CHECK)
    changes = []
    for depth in ("1", "9", "2", "8"):
        monkeypatch.setenv("DEPTH", depth)
        suite.runpytest("-m", "daily")
        changes.append(findings(suite)["changes"])
    assert changes[0]["previous_run"] is None
    assert changes[1]["newly_failing"] == ["FLIP-001"]
    assert changes[2]["recovered"] == ["FLIP-001"]
    assert changes[3]["flapping"] == ["FLIP-001"]
    assert changes[3]["trends"] == {"FLIP-001": [1.0, 9.0, 2.0, 8.0]}
    html = (latest(suite) / "report.html").read_text()
    assert "Newly failing (1)" in html
    assert "<svg" in html
    # A run with another selection is not compared with these.
    monkeypatch.setenv("DEPTH", "1")
    suite.runpytest("-m", "daily or weekly")
    assert findings(suite)["changes"]["previous_run"] is None


def test_a_fixed_or_waived_check_is_not_called_recovered() -> None:
    """Since the last run: a check that failed and was fixed in this run, or whose failure is
    waived, did not recover by itself; one that passes again did."""
    from opsbook.history import compare

    def run(run_id: str, outcomes: dict[str, str]) -> dict[str, Any]:
        rows = [{"check_id": c, "target": None, "outcome": o} for c, o in outcomes.items()]
        return {"run": {"run_id": run_id}, "findings": rows}

    before = run("a", {"FIX-001": "failed", "WAIVE-001": "failed", "BACK-001": "error"})
    now = run("b", {"FIX-001": "fixed", "WAIVE-001": "waived", "BACK-001": "passed"})
    changes = compare(now["findings"], [before])
    assert changes.to_dict()["recovered"] == ["BACK-001"]
