"""The runbook's alert rules (alerts/*.yml) mean what the runbook means.

`promtool test rules` runs the unit tests of tests/data/alerts/ in simulated time: every rule
firing and not firing, the runbook's windows and `for:` durations included, in a few
seconds. The old deviations of issue 18 (a 1-minute error window, /health counted as traffic,
QueueBacklog after 5 minutes, HighMemoryUsage after 5 minutes) are put back one at a time and
must make those tests fail: the tests can fail. On the running sandbox, every series the rules
select exists (opsbook's run metrics too: the runs push them to the sandbox's Pushgateway),
every job with a memory series has a recorded limit, and the dead man's switch goes silent once
a run reported. tests/test_compose_stack.py shows the series on the compose stack.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
import yaml
from alert_rules_support import (
    TIMEOUT_S,
    alert_states,
    jobs_without_memory_limit,
    missing_series,
    rules,
    rules_files,
    selectors,
    series,
)
from support import RunChecks, eventually

from opsbook import yamltext
from opsbook.compose import COMPOSE_FILE
from opsbook.locations import PACKAGE
from opsbook.probes.prometheus import metric_names
from opsbook.sandbox.compose import SCRAPED
from opsbook.sandbox.prometheus import LIMITS_FILE, compose_memory_limits, memory_limit_rules
from opsbook.sandbox.stack import Stack

PROMTOOL = "/usr/bin/promtool"
UNIT_TESTS = Path(__file__).parent / "data" / "alerts"
PROMTOOL_TIMEOUT_S = 60  # a generous bound against a hang; the tests take seconds


def promtool_test(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [shutil.which("promtool") or PROMTOOL, "test", "rules", *map(str, files)],
        capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT_S, check=False,
    )  # fmt: skip


def unit_test_files() -> list[Path]:
    return sorted(UNIT_TESTS.glob("*.test.yml"))


def test_promtool_unit_tests_pass() -> None:
    assert unit_test_files(), f"no *.test.yml in {UNIT_TESTS}"
    done = promtool_test(*unit_test_files())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_unit_tests_load_every_rules_file() -> None:
    for path in unit_test_files():
        named = yaml.safe_load(path.read_text())["rule_files"]
        loaded = {(path.parent / name).resolve() for name in named}
        assert loaded == {rules_file.resolve() for rules_file in rules_files()}, path


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    recorded: set[str] = set()
    for path in unit_test_files():
        for case in yaml.safe_load(path.read_text())["tests"]:
            for step in case.get("alert_rule_test") or []:
                (firing if step.get("exp_alerts") else silent).add(step["alertname"])
            for step in case.get("promql_expr_test") or []:
                recorded |= metric_names(step["expr"])
    alerts = set(rules("alert"))
    assert alerts == {"HighErrorRate", "QueueBacklog", "HighMemoryUsage"} | {
        "OpsbookRunMissing",
        "OpsbookRunFailing",
    }
    assert alerts - firing == set(), "never seen firing"
    assert alerts - silent == set(), "never seen silent"
    assert set(rules("record")) - recorded == set(), "recording rules without a test"


def test_rules_say_the_runbooks_durations() -> None:
    alerts = {name: rule for name, (rule,) in rules("alert").items()}
    assert "[5m]" in alerts["HighErrorRate"]["expr"]
    assert alerts["HighErrorRate"]["for"] == "5m"
    assert alerts["QueueBacklog"]["for"] == "15m"
    assert alerts["HighMemoryUsage"]["for"] == "10m"
    assert "> 0.9" in alerts["HighMemoryUsage"]["expr"]


# Each old deviation of issue 18, put back into a copy of the rules: the unit tests must fail,
# and name the test that catches it.
DEVIATIONS = {
    "1-minute error window": (
        "[5m]",
        "[1m]",
        "HighErrorRate counts errors over 5 minutes",
    ),
    "/health counted as traffic": (
        ', handler!~"/health|/metrics"',
        "",
        "HighErrorRate ignores /health and /metrics 503s",
    ),
    "QueueBacklog after 5 minutes": (
        "expr: queue_pending_messages > 1000\n        for: 15m",
        "expr: queue_pending_messages > 1000\n        for: 5m",
        "QueueBacklog stays silent for a burst drained within 15 minutes",
    ),
    "HighMemoryUsage after 5 minutes": (
        "> 0.9\n        for: 10m",
        "> 0.9\n        for: 5m",
        "HighMemoryUsage fires after 10 minutes over 90%",
    ),
    "one limit for every job": (
        "/ on (job) group_left ()\n          job:memory_limit_bytes",
        "/ 2147483648",
        "HighMemoryUsage compares each job with its own limit",
    ),
    "dead man's switch per selection": (
        "max without (selection) (opsbook_last_run_timestamp_seconds)",
        "opsbook_last_run_timestamp_seconds",
        "OpsbookRunMissing is about any run, not each selection",
    ),
}


@pytest.mark.parametrize(("old", "new", "caught_by"), DEVIATIONS.values(), ids=DEVIATIONS)
def test_unit_tests_catch_a_deviation(old: str, new: str, caught_by: str, tmp_path: Path) -> None:
    rules_dir = tmp_path / "alerts"
    rules_dir.mkdir()
    changed = ""
    for path in rules_files():
        text = path.read_text()
        if old in text:
            text = text.replace(old, new)
            assert old not in text
            changed = path.name
        (rules_dir / path.name).write_text(text)
    assert changed, f"{old!r} is in no rules file"
    tests_dir = tmp_path / "tests"
    tests_dir.mkdir()
    # Only the unit tests file that holds the catching test: promtool takes seconds per file.
    (path,) = [path for path in unit_test_files() if f"name: {caught_by}" in path.read_text()]
    document = yaml.safe_load(path.read_text())
    document["rule_files"] = [f"../alerts/{Path(name).name}" for name in document["rule_files"]]
    (tests_dir / path.name).write_text(yaml.safe_dump(document, sort_keys=False))
    done = promtool_test(tests_dir / path.name)
    assert done.returncode != 0, f"{changed} with {new!r}: the unit tests still pass"
    assert f"name: {caught_by}" in done.stdout + done.stderr, done.stdout + done.stderr


# -- the series, on a running stack -------------------------------------------------------


def test_compose_limits_cover_the_jobs_its_prometheus_scrapes() -> None:
    """The compose stack writes a limit for each job of its Prometheus's configuration."""
    config = yaml.safe_load((PACKAGE / "containers" / "prometheus" / "prometheus.yml").read_text())
    assert {job["job_name"] for job in config["scrape_configs"]} == set(SCRAPED)
    compose = yamltext.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    limits = compose_memory_limits(compose, SCRAPED)
    assert set(limits) == set(SCRAPED)
    written = yaml.safe_load(memory_limit_rules(limits, COMPOSE_FILE.name))
    shipped = yaml.safe_load((PACKAGE / "alerts" / LIMITS_FILE).read_text())
    assert [g["name"] for g in written["groups"]] == [g["name"] for g in shipped["groups"]]
    assert {r["record"] for r in written["groups"][0]["rules"]} == {"job:memory_limit_bytes"}
    assert {r["labels"]["job"]: r["expr"] for r in written["groups"][0]["rules"]} == {
        job: f"vector({limit})" for job, limit in limits.items()
    }


def test_selectors_are_read_from_the_rules() -> None:
    assert set(selectors()) >= {
        'http_requests_total{status=~"5..", handler!~"/health|/metrics"}',
        "queue_pending_messages",
        "process_resident_memory_bytes",
        "job:memory_limit_bytes",
        "opsbook_last_run_timestamp_seconds",
        "opsbook_last_run_success",
    }


def test_every_series_the_rules_use_exists_on_the_sandbox(
    sandbox: Stack, run_checks: RunChecks
) -> None:
    """Each selector of the rules has series, opsbook's run metrics included (a run against the
    sandbox pushes them to its Pushgateway), and each job with a memory series a limit."""
    url = f"http://127.0.0.1:{sandbox.state.ports['prometheus']}"
    run_checks("--check=ALERT-002")

    def complete() -> bool:
        """every selector of the rules has series (scraped every 2 s, rules evaluated every 2 s)"""
        return not missing_series(url)

    eventually(complete)
    assert jobs_without_memory_limit(url) == set()
    (pushed,) = series(url, 'opsbook_last_run_success{selection="all"}')
    assert pushed["job"] == "opsbook"
    assert pushed["deployment"] == "sandbox"


def test_dead_man_is_silent_once_a_run_reported(
    fresh_sandbox: Stack, run_checks: RunChecks
) -> None:
    """A sandbox no run has reported to holds OpsbookRunMissing (pending: it fires after its
    10 minutes); a run against it pushes its metrics and the alert goes away. A failing run
    makes OpsbookRunFailing fire, which the next run's ALERT-004 lists without failing on it
    (else every run after a failure would fail, a loop no fix ends)."""
    url = f"http://127.0.0.1:{fresh_sandbox.state.ports['prometheus']}"

    def pending() -> bool:
        """OpsbookRunMissing is pending on a sandbox without runs"""
        return alert_states(url, "OpsbookRunMissing") == {"pending"}

    eventually(pending)
    run = run_checks("--check=ALERT-002", inventory=fresh_sandbox.inventory_path)
    assert run.outcome("ALERT-002", "prometheus") == "passed", run.output

    def silent() -> bool:
        """OpsbookRunMissing is gone once the run's metrics were scraped"""
        return alert_states(url, "OpsbookRunMissing") == set()

    eventually(silent)

    inventory = fresh_sandbox.inventory_path
    failing = run_checks(
        "--check=RES-001",
        inventory=inventory,
        env={"OPSBOOK__THRESHOLDS__DISK_USED_PERCENT": "0.01"},
    )
    assert failing.outcome("RES-001", "local") == "failed", failing.output

    def failing_fires() -> bool:
        """OpsbookRunFailing fires after the failing run"""
        return alert_states(url, "OpsbookRunFailing") == {"firing"}

    eventually(failing_fires)
    run = run_checks("--check=ALERT-004", inventory=inventory)
    row = run.row("ALERT-004", "prometheus")
    assert row["outcome"] == "passed", run.output
    evidence = json.loads(row["evidence"]["alerts"])
    (listed,) = evidence["about opsbook's runs (not judged)"]
    assert listed.startswith("OpsbookRunFailing{")
    assert listed.endswith("(firing)")


def test_a_limit_below_the_resident_memory_makes_high_memory_usage_pending(
    breakable_sandbox: Stack,
) -> None:
    """The sandbox's memory limits file rewritten as a deployment would (the backend limited to
    its resident memory, the others as shipped) and Prometheus reloaded: HighMemoryUsage goes
    pending for the backend alone, on the real series. The shipped file is put back after."""
    url = f"http://127.0.0.1:{breakable_sandbox.state.ports['prometheus']}"
    path = breakable_sandbox.dir / "prometheus" / "rules" / LIMITS_FILE
    shipped = path.read_text()
    answer = requests.get(
        f"{url}/api/v1/query",
        {"query": 'process_resident_memory_bytes{job="backend"}'},
        timeout=TIMEOUT_S,
    ).json()
    resident = int(float(answer["data"]["result"][0]["value"][1]))
    limits = {"backend": resident, "prometheus": 512 * 2**20, "pushgateway": 128 * 2**20}
    try:
        path.write_text(memory_limit_rules(limits, "a test"))
        reload(url)

        def pending() -> bool:
            """HighMemoryUsage is pending for the backend"""
            return alert_states(url, "HighMemoryUsage") == {"pending"}

        eventually(pending)
        answer = requests.get(f"{url}/api/v1/alerts", timeout=TIMEOUT_S).json()
        jobs = {
            a["labels"]["job"]
            for a in answer["data"]["alerts"]
            if a["labels"]["alertname"] == "HighMemoryUsage"
        }
        assert jobs == {"backend"}
    finally:
        path.write_text(shipped)
        reload(url)

    def resolved() -> bool:
        """HighMemoryUsage resolved with the shipped limits"""
        return alert_states(url, "HighMemoryUsage") == set()

    eventually(resolved)


def reload(prometheus_url: str) -> None:
    response = requests.post(f"{prometheus_url}/-/reload", timeout=10)
    assert response.status_code == 200, response.text
