"""OBS-004 and ALERT-004 on a real sandbox: a backend answering 500 on its API while /health
says 200, and a real alert firing in the real Prometheus.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from support import RunChecks, eventually

from opsbook.sandbox.stack import Stack

pytestmark = pytest.mark.sandbox

TIMEOUT_S = 5


def prometheus_value(stack: Stack, query: str) -> float:
    """The query's single value now in the stack's Prometheus (0 when it has no series)."""
    answer = requests.get(
        f"http://127.0.0.1:{stack.state.ports['prometheus']}/api/v1/query",
        params={"query": query},
        timeout=TIMEOUT_S,
    ).json()
    result = answer["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def seen_by_prometheus(stack: Stack, handler: str, status: str, count: int) -> None:
    """Wait until Prometheus has scraped `count` such answers from the backend."""
    query = f'sum(http_requests_total{{handler="{handler}", status="{status}"}})'
    eventually(
        lambda: prometheus_value(stack, query) >= count,
        f"Prometheus counts {count} {status} answers of {handler}",
    )


# OBS-004


@pytest.mark.breaks("OBS-004")
def test_a_backend_answering_500_on_its_api_fails_while_health_passes(
    fresh_sandbox: Stack, run_checks: RunChecks
) -> None:
    """A schema change the code does not expect (the message's timestamp becomes text): every
    GET /api/messages/<id> is a 500 from the backend's own handler, while /health, which only
    runs SELECT 1, stays 200. The stack is the test's own: the 500s stay in the window."""
    stack = fresh_sandbox
    backend = f"http://127.0.0.1:{stack.state.ports['backend']}"
    inventory = stack.inventory_path
    # Prometheus has the (zero) request counters twice: increase() has something to compare.
    eventually(
        lambda: prometheus_value(stack, "count_over_time(http_requests_total[1m])") >= 2,
        "two scrapes of the backend's request counters",
    )
    idle = run_checks("--check=OBS-004", inventory=inventory).row("OBS-004", "prometheus")
    assert idle["outcome"] == "skipped", idle
    assert idle["message"] == (
        "prometheus prometheus: no application requests in the last 300 s (the inventory's "
        "thresholds.traffic_window_s): nothing to compare"
    )

    # Healthy traffic: a message posted, stored by the worker, read back.
    posted = requests.post(
        f"{backend}/api/messages", json={"content": "hi", "user_id": "u"}, timeout=TIMEOUT_S
    )
    assert posted.status_code == 202, posted.text
    message = f"{backend}/api/messages/{posted.json()['id']}"
    eventually(lambda: requests.get(message, timeout=TIMEOUT_S).status_code == 200, "stored")
    for _ in range(5):
        assert requests.get(message, timeout=TIMEOUT_S).status_code == 200
    seen_by_prometheus(stack, "/api/messages/{id}", "200", 6)
    healthy = run_checks("--check=OBS-004", inventory=inventory).row("OBS-004", "prometheus")
    assert healthy["outcome"] == "passed", healthy
    assert (healthy["observed"], healthy["unit"]) == (0.0, "%")
    assert healthy["expected"] == "<= 5 % of requests and <= 0.1 5xx/s"

    stack.component("postgres").psql(
        'ALTER TABLE messages ALTER COLUMN "timestamp" DROP DEFAULT, '
        'ALTER COLUMN "timestamp" TYPE text USING "timestamp"::text',
        database="chatdb",
    )
    for _ in range(20):
        assert requests.get(message, timeout=TIMEOUT_S).status_code == 500
    assert requests.get(f"{backend}/health", timeout=TIMEOUT_S).status_code == 200
    seen_by_prometheus(stack, "/api/messages/{id}", "500", 20)
    run = run_checks("--check=OBS-004,HEALTH-001", inventory=inventory)
    assert run.outcome("HEALTH-001", "backend") == "passed", run.output
    row = run.row("OBS-004", "prometheus")
    assert row["outcome"] == "failed", run.output
    assert re.fullmatch(
        r"prometheus prometheus: backend/127\.0\.0\.1:\d+: (\d+) of (\d+) requests answered "
        r"5xx in the last 300 s \((\d+) %, [0-9.e-]+/s\) \(expected <= 5 % of requests and "
        r"<= 0\.1 5xx/s\)",
        row["message"],
    ), row["message"]
    assert row["observed"] > 50
    assert "5xx" in row["evidence"]["traffic"]


# ALERT-004

RULES = """
groups:
  - name: opsbook-test
    rules:
      - alert: TestBackendDown
        expr: up{job="backend"} == 0
        labels: {severity: critical}
        annotations: {summary: "the backend does not answer Prometheus"}
      - alert: TestBackendDownForAnHour
        expr: up{job="backend"} == 0
        for: 1h
"""


def alert_states(stack: Stack) -> dict[str, str]:
    answer = requests.get(
        f"http://127.0.0.1:{stack.state.ports['prometheus']}/api/v1/alerts", timeout=TIMEOUT_S
    ).json()
    return {a["labels"]["alertname"]: a["state"] for a in answer["data"]["alerts"]}


def reload_prometheus(stack: Stack) -> None:
    url = f"http://127.0.0.1:{stack.state.ports['prometheus']}/-/reload"
    assert requests.post(url, timeout=30).status_code == 200


@pytest.fixture
def test_rules(breakable_sandbox: Stack) -> Iterator[Stack]:
    """Two rules of the test's own in the sandbox's Prometheus, removed afterwards: one fires as
    soon as the backend's scrape fails, the other stays pending for an hour."""
    stack = breakable_sandbox
    path = stack.dir / "prometheus" / "rules" / "opsbook-test.yml"
    path.write_text(RULES)
    reload_prometheus(stack)
    try:
        yield stack
    finally:
        path.unlink()
        reload_prometheus(stack)


def waivers_file(directory: Path, expires: dt.date) -> Path:
    path = directory / f"waivers-{expires}.yaml"
    waiver: dict[str, Any] = {
        "check": "ALERT-004", "target": "TestBackendDown", "owner": "alice@example.com",
        "reason": "the backend is being replaced", "ticket": "OPS-18", "expires": expires,
    }  # fmt: skip
    path.write_text(yaml.safe_dump({"waivers": [waiver]}))
    return path


@pytest.mark.breaks("ALERT-004")
def test_a_firing_alert_fails_and_is_named(
    test_rules: Stack, tmp_path: Path, run_checks: RunChecks
) -> None:
    stack = test_rules
    assert run_checks("--check=ALERT-004").outcome("ALERT-004", "prometheus") == "passed"
    stack.stop("backend")
    eventually(
        lambda: alert_states(stack).get("TestBackendDown") == "firing", "TestBackendDown fires"
    )
    assert alert_states(stack)["TestBackendDownForAnHour"] == "pending"
    run = run_checks("--check=ALERT-004")
    row = run.row("ALERT-004", "prometheus")
    assert row["outcome"] == "failed", run.output
    port = stack.state.ports["backend"]
    firing = f'TestBackendDown{{instance="127.0.0.1:{port}", job="backend"}}'
    assert row["message"] == (
        f"prometheus prometheus: firing: {firing} (expected none firing, expected and waived "
        "alerts aside)"
    )
    # Pending is not firing: listed, not failed.
    assert "TestBackendDownForAnHour" not in row["message"]
    assert "TestBackendDownForAnHour" in row["evidence"]["alerts"]

    # Waived by name: the check is waived, with the waiver in the report.
    today = dt.date.today()
    waived = run_checks("--check=ALERT-004", f"--waivers={waivers_file(tmp_path, today)}")
    row = waived.row("ALERT-004", "prometheus")
    assert row["outcome"] == "waived", waived.output
    assert row["message"] == f"prometheus prometheus: firing: {firing}"
    assert row["waiver"] == (
        f"{firing}: alice@example.com, OPS-18, until {today}: the backend is being replaced"
    )
    # An expired waiver accepts nothing.
    expired = waivers_file(tmp_path, today - dt.timedelta(days=1))
    row = run_checks("--check=ALERT-004", f"--waivers={expired}").row("ALERT-004", "prometheus")
    assert row["outcome"] == "failed"
    assert (
        f"firing: {firing} (its waiver expired on {today - dt.timedelta(days=1)})"
        in (row["message"])
    )

    # Listed as expected by the inventory: not a failure.
    raw = yaml.safe_load(stack.inventory_path.read_text())
    raw["http"]["prometheus"]["expected_alerts"] = ["TestBackendDown"]
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump(raw))
    run = run_checks("--check=ALERT-004", inventory=inventory)
    assert run.outcome("ALERT-004", "prometheus") == "passed", run.output
