"""Health, database and observability checks: each fails on a really broken sandbox and passes
again once it is restored. Grafana cannot be installed here: its check is tested against a
loopback server that replays recorded answers of Grafana's real /api/health (said below).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg
import pytest
import requests
import yaml
from support import RunChecks, eventually, started_between_scrapes

from opsbook.inventory import load_inventory
from opsbook.probes import prometheus as probe
from opsbook.sandbox.stack import Stack
from opsbook.targets import HttpTarget

pytestmark = pytest.mark.sandbox


def app_connection(sandbox: Stack) -> psycopg.Connection[tuple[object, ...]]:
    password = (sandbox.dir / "secrets" / "chat_app.password").read_text().strip()
    return psycopg.connect(
        host="127.0.0.1", port=sandbox.state.ports["postgres"], dbname="chatdb",
        user="chat_app", password=password, connect_timeout=3,
    )  # fmt: skip


@pytest.mark.breaks("HEALTH-001")
def test_health_fails_when_a_dependency_is_down(
    breakable_sandbox: Stack, run_checks: RunChecks
) -> None:
    breakable_sandbox.stop("redis")
    run = run_checks("--check=HEALTH-001")
    assert run.row("HEALTH-001", "backend")["message"] == (
        "backend: GET /health answered 503 (expected 200)"
    )
    assert run.row("HEALTH-001", "backend")["observed"] == 503
    assert '"redis": "error"' in run.row("HEALTH-001", "backend")["evidence"]["response"]
    breakable_sandbox.start("redis")
    assert run_checks("--check=HEALTH-001").exit_code == 0


def test_maintenance_mode_makes_the_frontend_checks_not_applicable(
    breakable_sandbox: Stack, run_checks: RunChecks
) -> None:
    """A maintenance page switched on by hand is read from the entry: the frontend's checks
    are not applicable (the report says maintenance was on), the backend's still run."""
    flag = breakable_sandbox.dir / "nginx" / "maintenance.on"
    flag.touch()
    flag.chmod(0o644)
    run = run_checks("--check=HEALTH-001,HEALTH-002")
    for check_id in ("HEALTH-001", "HEALTH-002"):
        assert run.outcome(check_id, "frontend") == "skipped"
        assert run.row(check_id, "frontend")["message"] == (
            "maintenance mode is on: frontend serves its maintenance page"
        )
        assert run.outcome(check_id, "backend") == "passed"
    (breakable_sandbox.dir / "nginx" / "maintenance.on").unlink()
    assert run_checks("--check=HEALTH-001").exit_code == 0


@pytest.mark.breaks("HEALTH-002")
def test_slow_health_answer_breaks_the_budget(
    breakable_sandbox: Stack, run_checks: RunChecks
) -> None:
    """A hung Redis (SIGSTOP) makes the backend's /health wait for its Redis timeout (1 s);
    the budget is set to 0.5 s so that the test does not wait for the default 2 s."""
    budget = {"OPSBOOK__THRESHOLDS__RESPONSE_TIME_S": "0.5"}
    assert run_checks("--check=HEALTH-002", env=budget).exit_code == 0
    redis_pid = breakable_sandbox.component("redis").pid()
    assert redis_pid is not None
    os.kill(redis_pid, signal.SIGSTOP)
    try:
        run = run_checks("--check=HEALTH-002", env=budget)
    finally:
        os.kill(redis_pid, signal.SIGCONT)
    row = run.row("HEALTH-002", "backend")
    assert row["outcome"] == "failed"
    assert row["message"].startswith("backend: /health took ")
    assert row["message"].endswith(" s (expected <= 0.5 s)")
    assert row["observed"] > 0.5
    assert row["unit"] == "s"
    assert run.outcome("HEALTH-002", "frontend") == "passed"


@pytest.mark.breaks("HEALTH-003")
def test_debug_mode_disclosure_is_caught(breakable_sandbox: Stack, run_checks: RunChecks) -> None:
    config_path = breakable_sandbox.dir / "app.json"
    original = config_path.read_text()
    config_path.write_text(json.dumps({**json.loads(original), "debug": True}))
    try:
        breakable_sandbox.restart("backend")
        run = run_checks("--check=HEALTH-003")
    finally:
        config_path.write_text(original)
        breakable_sandbox.restart("backend")
    row = run.row("HEALTH-003", "backend")
    assert row["outcome"] == "failed"
    assert "version: chat-backend/0.1.0" in row["message"]
    assert "connection string: postgresql://chat_app@127.0.0.1:" in row["message"]
    assert run.outcome("HEALTH-003", "frontend") == "passed"
    assert run_checks("--check=HEALTH-003").exit_code == 0


@pytest.mark.breaks("DB-002")
def test_connections_near_the_limit_fail(sandbox: Stack, run_checks: RunChecks) -> None:
    connections = [app_connection(sandbox) for _ in range(40)]  # of max_connections = 50
    try:
        run = run_checks("--check=DB-002")
    finally:
        for connection in connections:
            connection.close()
    row = run.row("DB-002")
    assert row["outcome"] == "failed"
    assert "connections in use" in row["message"]
    assert "(expected <= 80 %)" in row["message"]
    assert "chat_app" in row["evidence"]["connections by role and state"]
    assert run_checks("--check=DB-002").exit_code == 0


@pytest.mark.breaks("DB-003")
def test_idle_transaction_is_caught(sandbox: Stack, run_checks: RunChecks) -> None:
    limit = {"OPSBOOK__THRESHOLDS__IDLE_IN_TRANSACTION_S": "1"}
    with app_connection(sandbox) as connection:
        connection.execute("SELECT count(*) FROM messages")  # opens the transaction
        time.sleep(1.5)
        run = run_checks("--check=DB-003", env=limit)
        connection.rollback()
        row = run.row("DB-003")
        assert row["outcome"] == "failed"
        assert "idle in transaction for more than 1 s" in row["message"]
        assert "user chat_app" in row["message"]
        assert run_checks("--check=DB-003", env=limit).exit_code == 0


@pytest.mark.breaks("DB-004")
def test_missing_table_is_caught(sandbox: Stack, run_checks: RunChecks) -> None:
    postgres = sandbox.component("postgres")
    postgres.psql("ALTER TABLE agents RENAME TO agents_renamed", database="chatdb")
    try:
        run = run_checks("--check=DB-004")
    finally:
        postgres.psql("ALTER TABLE agents_renamed RENAME TO agents", database="chatdb")
    assert run.row("DB-004")["message"] == (
        "postgres chatdb: missing table(s) agents in chatdb "
        "(expected agents, conversations, messages)"
    )
    assert run_checks("--check=DB-004").exit_code == 0


@pytest.mark.breaks("OBS-001")
def test_prometheus_down_fails(breakable_sandbox: Stack, run_checks: RunChecks) -> None:
    breakable_sandbox.stop("prometheus")
    run = run_checks("--check=OBS-001")
    assert run.outcome("OBS-001") == "failed"
    assert run.row("OBS-001")["message"].startswith("prometheus prometheus: ")
    breakable_sandbox.start("prometheus")
    assert run_checks("--check=OBS-001").exit_code == 0


def _backend_up(sandbox: Stack) -> str | None:
    url = f"http://127.0.0.1:{sandbox.state.ports['prometheus']}/api/v1/query"
    try:
        answer = requests.get(url, params={"query": 'up{job="backend"}'}, timeout=3).json()
    except requests.RequestException:
        return None
    series = answer["data"]["result"]
    return series[0]["value"][1] if series else None


@pytest.mark.breaks("OBS-002")
def test_scrape_target_down_fails(breakable_sandbox: Stack, run_checks: RunChecks) -> None:
    breakable_sandbox.stop("backend")

    def backend_seen_down() -> bool:
        """Prometheus scraped the stopped backend"""
        return _backend_up(breakable_sandbox) == "0"

    eventually(backend_seen_down)
    run = run_checks("--check=OBS-002")
    row = run.row("OBS-002")
    assert row["outcome"] == "failed"
    # The target, and why Prometheus's last scrape of it failed.
    assert re.search(r"down: backend/127\.0\.0\.1:\d+ \(connection refused\)", row["message"])
    breakable_sandbox.start("backend")

    def backend_seen_up() -> bool:
        """Prometheus scraped the restarted backend"""
        return _backend_up(breakable_sandbox) == "1"

    eventually(backend_seen_up)
    assert run_checks("--check=OBS-002").exit_code == 0


@pytest.mark.breaks("OBS-002")
def test_a_target_started_since_its_last_scrape_is_judged_on_the_next_scrape(
    breakable_sandbox: Stack,
) -> None:
    """Prometheus still says "down" for a backend started after its last scrape (a deploy's
    restart, a start by hand between two runs): OBS-002's probe waits for the next scrape,
    due within the timeout, and sees the backend up; asked not to wait, it sees the stale
    "down" and why the last scrape failed."""
    spec = load_inventory(breakable_sandbox.inventory_path, environ={}).http["prometheus"]
    prometheus = HttpTarget("prometheus", spec, 3.0)
    try:
        backend = started_between_scrapes(
            lambda: breakable_sandbox.stop("backend"),
            lambda: breakable_sandbox.start("backend"),
            prometheus,
            "backend",
        )
        stale = {t.name: t for t in probe.scrape_targets(prometheus)}
        assert (stale[backend].up, stale[backend].error) == ("0", "connection refused")
        fresh = {t.name: t for t in probe.scrape_targets(prometheus, next_scrape_within_s=5)}
        assert (fresh[backend].up, fresh[backend].error) == ("1", "")
    finally:
        prometheus.close()


def test_prometheus_durations_and_last_scrapes_read_as_prometheus_writes_them() -> None:
    assert [probe.duration_s(text) for text in ("2s", "1m30s", "500ms", "1h", "", "2", "s")] == [
        2,
        90,
        0.5,
        3600,
        None,
        None,
        None,
    ]
    scrape = probe.LastScrape("2026-12-02T07:56:07.271673006Z", "", 2.0)
    assert scrape.next_in(datetime.fromisoformat("2026-12-02T07:56:08.5Z").timestamp()) == (
        pytest.approx(0.771673)
    )
    never = probe.LastScrape("0001-01-01T00:00:00Z", "", 2.0)  # not scraped yet
    assert never.next_in(0) == float("inf")
    assert probe.LastScrape("x", "", 2.0).next_in(0) == float("inf")  # not a time
    assert probe.LastScrape("", "", None).next_in(0) == float("inf")  # Prometheus before 2.33
    refused = 'Get "http://127.0.0.1:1/metrics": dial tcp 127.0.0.1:1: connect: connection refused'
    assert probe.LastScrape("", refused, 2.0).reason == "connection refused"
    assert probe.LastScrape("", "server returned HTTP status 503", 2.0).reason == (
        "server returned HTTP status 503"
    )
    unparsable = 'expected a valid start token, got "<" ("INVALID") while parsing: "<"'
    assert probe.LastScrape("", unparsable, 2.0).reason == unparsable
    lookup = 'Get "http://backend:8000/metrics": dial tcp: lookup backend on 10.89.0.1:53: '
    lookup += "no such host"
    assert probe.LastScrape("", lookup, 2.0).reason == "no such host"


# Recorded answers of Grafana 10's GET /api/health (healthy, and with its database unreachable).
GRAFANA_OK = (200, {"commit": "2e2f3a5a3b", "database": "ok", "version": "10.4.2"})
GRAFANA_FAILING = (503, {"commit": "2e2f3a5a3b", "database": "failing", "version": "10.4.2"})


@pytest.fixture
def grafana_replay() -> Iterator[tuple[str, dict[str, tuple[int, dict[str, str]]]]]:
    """A loopback server replaying Grafana's /api/health: Grafana cannot be installed here."""
    answer = {"now": GRAFANA_OK}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = answer["now"] if self.path == "/api/health" else (404, {})
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", answer
    server.shutdown()
    server.server_close()


@pytest.mark.breaks("OBS-003")
def test_grafana_database_failing_is_caught(
    sandbox: Stack, run_checks: RunChecks, grafana_replay: tuple[str, dict], tmp_path: Path
) -> None:
    url, answer = grafana_replay
    inventory = yaml.safe_load(sandbox.inventory_path.read_text())
    inventory["http"]["grafana"] = {"kind": "grafana", "url": url, "health_path": "/api/health"}
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(inventory))
    assert run_checks("--check=OBS-003", inventory=path).exit_code == 0
    answer["now"] = GRAFANA_FAILING
    row = run_checks("--check=OBS-003", inventory=path).row("OBS-003", "grafana")
    assert row["outcome"] == "failed"
    assert row["message"] == (
        "grafana grafana: /api/health answered 503 with database='failing' "
        "(expected 200 database=ok)"
    )


def _never_accepting_listener() -> Iterator[int]:
    """A bound, listening socket whose backlog is full: connections to it hang."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@pytest.fixture
def hanging_port() -> Iterator[int]:
    yield from _never_accepting_listener()


def test_everything_unreachable_ends_within_one_timeout(
    sandbox: Stack, run_checks: RunChecks, hanging_port: int, tmp_path: Path
) -> None:
    """Worst case: every target hangs or refuses; the run is bounded by one timeout (+5 s)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    inventory = {
        "name": "nothing-answers",
        "http": {
            "backend": {"kind": "backend", "url": f"http://127.0.0.1:{hanging_port}"},
            "frontend": {"kind": "frontend", "url": f"http://127.0.0.1:{closed}"},
            "prometheus": {"kind": "prometheus", "url": f"http://127.0.0.1:{hanging_port}"},
        },
        "postgres": {"chatdb": {"port": hanging_port}},
        "redis": {"queue": {"url": f"redis://127.0.0.1:{hanging_port}/0"}},
        "thresholds": {"timeout_s": 2},
    }
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(inventory))
    started = time.monotonic()
    run = run_checks("-m", "daily and not resources and not logs", inventory=path)
    elapsed = time.monotonic() - started
    # The run's own time (from its start, Python's and pytest's start-up aside) is the bound;
    # the whole process gets a generous margin for a loaded machine: this guards a hang.
    assert run.document["run"]["duration_s"] < 2 + 5, run.document["run"]
    assert elapsed < 2 + 5 + 15, f"took {elapsed:.1f}s\n{run.output}"
    assert run.exit_code in (1, 10)
    assert "passed" not in set(run.outcomes().values()), run.outcomes()
    summary = run.output.split("targets that could not be reached")[1]
    summary = summary.split("short test summary info")[0]
    for target in ("postgres chatdb", "redis queue", "http backend", "http prometheus"):
        assert summary.count(f"unreachable: {target} ") == 1, summary


@pytest.mark.breaks("HEALTH-004")
def test_api_sent_to_the_wrong_upstream_fails_the_public_path(
    breakable_sandbox: Stack, run_checks: RunChecks
) -> None:
    """nginx's /api/ sent to Prometheus instead of the backend: both /health still answer 200,
    HEALTH-004 sees the API answer through the entry differ from the backend's own."""
    stack = breakable_sandbox
    ports = stack.state.ports
    config = stack.dir / "nginx" / "nginx.conf"
    healthy = config.read_text()
    probe = f"http://127.0.0.1:{ports['nginx']}/api/messages/opsbook-route-probe"

    def reload_nginx() -> None:
        pid = stack.component("nginx").pid()
        assert pid is not None
        os.kill(pid, signal.SIGHUP)

    passed = run_checks("--check=HEALTH-004")
    assert passed.outcome("HEALTH-004", "frontend") == "passed"
    assert passed.row("HEALTH-004", "frontend")["observed"] == "404 application/json"
    config.write_text(
        healthy.replace(f"127.0.0.1:{ports['backend']};", f"127.0.0.1:{ports['prometheus']};")
    )
    reload_nginx()
    try:
        eventually(lambda: requests.get(probe, timeout=5).headers.get("Content-Type", "")
                   != "application/json", "nginx sends /api/ to Prometheus")  # fmt: skip
        run = run_checks("--check=HEALTH-001,HEALTH-004")
        assert run.outcome("HEALTH-001", "frontend") == "passed"
        assert run.outcome("HEALTH-001", "backend") == "passed"
        row = run.row("HEALTH-004", "frontend")
        assert row["outcome"] == "failed"
        assert row["message"].startswith(
            "frontend: GET /api/messages/opsbook-route-probe answered 404 text/plain through "
            "the entry, 404 application/json from backend"
        ), row["message"]
    finally:
        config.write_text(healthy)
        reload_nginx()
    eventually(lambda: requests.get(probe, timeout=5).headers.get("Content-Type", "")
               == "application/json", "nginx sends /api/ to the backend again")  # fmt: skip


@pytest.mark.breaks("HEALTH-005")
@pytest.mark.fixes("HEALTH-005")
def test_a_dead_idle_worker_fails_and_is_restarted(
    breakable_sandbox: Stack, run_checks: RunChecks
) -> None:
    """The worker killed while no message flows: only the process check can see it; its fix
    starts the worker again (and nothing else: the backend keeps its pid)."""
    stack = breakable_sandbox
    worker = stack.component("worker").pid()
    backend = stack.component("backend").pid()
    assert worker is not None
    os.kill(worker, signal.SIGKILL)
    eventually(lambda: not stack.component("worker").is_running(), "the worker is gone")
    run = run_checks("--check=HEALTH-005")
    row = run.row("HEALTH-005", "worker")
    assert row["outcome"] == "failed"
    assert row["message"].startswith(
        "service worker: not running (sandbox runtime: python -m opsbook sandbox status --dir "
    ), row["message"]
    assert run.outcome("HEALTH-005", "backend") == "skipped"  # HEALTH-001 watches it
    fixed = run_checks("--check=HEALTH-005", "--remediate=apply", "--allow=restart")
    attempt = fixed.row("HEALTH-005", "worker")["remediation_attempt"]
    assert (fixed.outcome("HEALTH-005", "worker"), attempt["verdict"]) == ("fixed", "FIXED")
    assert stack.component("worker").is_running()
    assert stack.component("backend").pid() == backend
