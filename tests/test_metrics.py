"""Results as metrics: the textfile for node exporter, and a push to a real Pushgateway."""

from __future__ import annotations

import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pushgateway_server
import pytest
import requests

CHECKS = '''
import pytest
from opsbook import Severity, Unit, check

pytestmark = pytest.mark.daily

@check("M-001", Severity.HIGH)
def test_ok(finding):
    """Passes with a measured value."""
    finding.expect(42, "<= 80", ok=True, unit=Unit.PERCENT)

@check("M-002", Severity.LOW)
def test_broken(finding):
    """Fails, with its measured value."""
    finding.expect(93.5, "<= 80", ok=False, unit=Unit.PERCENT)

@check("M-003", Severity.LOW)
def test_words(finding):
    """Passes with an observation that is not a number."""
    finding.expect("PONG", "PONG", ok=True)
'''


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makeini("[pytest]\naddopts = --strict-markers -p no:cacheprovider\n")
    pytester.makeconftest('pytest_plugins = ["opsbook.plugin", "opsbook.fixtures.targets"]\n')
    (pytester.path / "inventory.yaml").write_text("name: metrics\n")
    monkeypatch.setenv("OPSBOOK_INVENTORY", str(pytester.path / "inventory.yaml"))
    pytester.makepyfile(test_m=CHECKS)
    return pytester


def test_textfile_has_every_check_and_the_run(suite: pytest.Pytester) -> None:
    path = suite.path / "opsbook.prom"
    assert suite.runpytest("-m", "daily", f"--metrics-textfile={path}").ret == 1
    text = path.read_text()
    labels = 'check_id="M-001",selection="daily",severity="high",target=""'
    assert f"opsbook_check_success{{{labels}}} 1.0" in text
    assert f"opsbook_check_observed_value{{{labels}}} 42.0" in text
    broken = 'check_id="M-002",selection="daily",severity="low",target=""'
    assert f"opsbook_check_success{{{broken}}} 0.0" in text
    # A failed check's measured value is exported too: it says how far off it is.
    assert f"opsbook_check_observed_value{{{broken}}} 93.5" in text
    # Words are no gauge value.
    words = 'check_id="M-003",selection="daily",severity="low",target=""'
    assert f"opsbook_check_success{{{words}}} 1.0" in text
    assert f"opsbook_check_observed_value{{{words}}}" not in text
    assert 'opsbook_last_run_success{selection="daily"} 0.0' in text
    assert 'opsbook_last_run_exit_code{selection="daily"} 1.0' in text


def test_the_inventory_names_the_textfile(suite: pytest.Pytester) -> None:
    """`metrics: {textfile}` in the inventory: every run against it writes there, and an
    option on the command line wins."""
    declared, given = suite.path / "declared.prom", suite.path / "given.prom"
    inventory = f"name: metrics\nmetrics: {{textfile: {declared}}}\n"
    (suite.path / "inventory.yaml").write_text(inventory)
    assert suite.runpytest("-m", "daily").ret == 1
    assert 'opsbook_last_run_success{selection="daily"} 0.0' in declared.read_text()
    declared.unlink()
    assert suite.runpytest("-m", "daily", f"--metrics-textfile={given}").ret == 1
    assert given.is_file()
    assert not declared.exists()


@pytest.fixture
def pushgateway(pushgateway_process: tuple[subprocess.Popen[bytes], str]) -> str:
    return pushgateway_process[1]


@pytest.fixture
def pushgateway_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A real Prometheus Pushgateway (Debian's prometheus-pushgateway) on a free loopback port."""
    with pushgateway_server.running(tmp_path) as found:
        yield found


def test_push_to_a_real_pushgateway(suite: pytest.Pytester, pushgateway: str) -> None:
    assert suite.runpytest("-m", "daily", f"--pushgateway={pushgateway}").ret == 1
    text = requests.get(f"{pushgateway}/metrics", timeout=3).text
    group = f'deployment="metrics",instance="{socket.gethostname()}",job="opsbook"'
    assert f'opsbook_last_run_success{{{group},selection="daily"}} 0' in text
    assert f'opsbook_check_success{{check_id="M-001",{group}' in text


def test_deployments_and_selections_never_overwrite_each_other(
    suite: pytest.Pytester, pushgateway: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Production and staging, or the daily and the audit run, keep a group each."""
    assert suite.runpytest("-m", "daily", f"--pushgateway={pushgateway}").ret == 1
    staging = suite.path / "staging.yaml"
    staging.write_text("name: staging\n")
    monkeypatch.setenv("OPSBOOK_INVENTORY", str(staging))
    assert suite.runpytest("-m", "daily", f"--pushgateway={pushgateway}").ret == 1
    assert suite.runpytest("-m", "not weekly", f"--pushgateway={pushgateway}").ret == 1
    text = requests.get(f"{pushgateway}/metrics", timeout=3).text
    runs = [line for line in text.splitlines() if line.startswith("opsbook_last_run_success{")]
    groups = {
        (line.split('deployment="')[1].split('"')[0], line.split('selection="')[1].split('"')[0])
        for line in runs
    }
    assert groups == {("metrics", "daily"), ("staging", "daily"), ("staging", "not weekly")}


def test_an_unreachable_pushgateway_is_one_line_not_a_crash(suite: pytest.Pytester) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    result = suite.runpytest("-m", "daily", f"--pushgateway=http://127.0.0.1:{closed}")
    assert result.ret == 1  # the checks' verdict, not the push's
    result.stdout.fnmatch_lines(["*opsbook: could not push metrics to http://127.0.0.1:*"])


def test_a_gateway_behind_basic_auth_takes_the_urls_credentials_and_never_shows_them(
    suite: pytest.Pytester, tmp_path: Path
) -> None:
    """`https://user:password@gateway` (a Pushgateway behind basic auth): the credentials are
    sent as basic auth, not taken for part of the host name; a refused push is one line that
    names the user, never the password."""
    user, password = pushgateway_server.USER, pushgateway_server.PASSWORD
    with pushgateway_server.running(tmp_path, guarded=True) as (_, url):
        host = url.removeprefix("http://")
        pushed = suite.runpytest("-m", "daily", f"--pushgateway=http://{user}:{password}@{host}")
        assert pushed.ret == 1  # the checks' verdict
        assert "opsbook: " not in pushed.stdout.str()  # nothing left unsent
        text = pushgateway_server.get(f"{url}/metrics", auth=True)
        assert 'opsbook_last_run_success{deployment="metrics"' in text
        refused = suite.runpytest("-m", "daily", f"--pushgateway=http://{user}:no{password}@{host}")
    refused.stdout.fnmatch_lines(
        [f"*opsbook: could not push metrics to http://{user}:***@{host}: HTTP Error 401*"]
    )
    assert password not in refused.stdout.str() + refused.stderr.str()


def test_a_gateway_url_that_is_not_http_is_a_usage_error_without_its_password(
    suite: pytest.Pytester,
) -> None:
    result = suite.runpytest("-m", "daily", "--pushgateway=ftp://ops:secret-x@gateway:21")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--pushgateway: not an http(s) URL: ftp://ops:***@gateway:21"])
    assert "secret-x" not in result.stdout.str() + result.stderr.str()


def test_a_silent_pushgateway_is_asked_once_not_pushed_to(
    suite: pytest.Pytester, pushgateway_process: tuple[subprocess.Popen[bytes], str]
) -> None:
    """A Pushgateway that hangs (stopped: it accepts connections, never answers) is asked once,
    in the background while the checks run, and not pushed to at the end: the run does not
    wait for it a second time (a deployment that hangs whole, its gateway included, ends
    within one timeout plus a few seconds)."""
    process, url = pushgateway_process
    process.send_signal(signal.SIGSTOP)
    try:
        result = suite.runpytest("-m", "daily", f"--pushgateway={url}")
    finally:
        process.send_signal(signal.SIGCONT)
    assert result.ret == 1  # the checks' verdict, not the push's
    result.stdout.fnmatch_lines(
        [f"*opsbook: did not push metrics to {url}: it gave no answer within 3 s*"]
    )
    assert "opsbook_last_run_success" not in requests.get(f"{url}/metrics", timeout=3).text


@pytest.fixture
def prometheus_on(pushgateway: str) -> Iterator[str]:
    """A real Prometheus scraping the Pushgateway every second, with the shipped alert rules."""
    root = Path(__file__).resolve().parent.parent
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = Path(tempfile.mkdtemp(prefix="opsbook-prometheus-"))
    (home / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{root / 'alerts' / 'chat-system.rules.yml'}]\n"
        "scrape_configs:\n"
        "  - job_name: pushgateway\n"
        "    honor_labels: true\n"
        f"    static_configs: [{{targets: ['{pushgateway.removeprefix('http://')}']}}]\n"
    )
    process = subprocess.Popen(
        ["prometheus", f"--config.file={home / 'prometheus.yml'}",
         f"--storage.tsdb.path={home / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(f"{url}/-/ready")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=15)


def _wait_ready(url: str, deadline_s: float = 20) -> None:
    end = time.monotonic() + deadline_s
    while True:
        try:
            if requests.get(url, timeout=1).ok:
                return
        except requests.ConnectionError:
            pass
        assert time.monotonic() < end, f"{url} did not become ready"
        time.sleep(0.1)


def _alert_state(prometheus: str, name: str) -> str | None:
    alerts = requests.get(f"{prometheus}/api/v1/alerts", timeout=3).json()["data"]["alerts"]
    states = [a["state"] for a in alerts if a["labels"]["alertname"] == name]
    return states[0] if states else None


def test_a_failing_run_fires_the_shipped_alert(
    suite: pytest.Pytester, pushgateway: str, prometheus_on: str
) -> None:
    """The alert rule shipped for failing cron runs really fires on opsbook's own metrics."""
    assert suite.runpytest("-m", "daily", f"--pushgateway={pushgateway}").ret == 1
    deadline = time.monotonic() + 30
    while _alert_state(prometheus_on, "OpsbookRunFailing") != "firing":
        assert time.monotonic() < deadline, "OpsbookRunFailing did not fire within 30 s"
        time.sleep(0.5)
    # A passing run clears it.
    suite.makepyfile(test_m=CHECKS.replace('93.5, "<= 80", ok=False', '42, "<= 80", ok=True'))
    assert suite.runpytest("-m", "daily", f"--pushgateway={pushgateway}").ret == 0
    deadline = time.monotonic() + 30
    while _alert_state(prometheus_on, "OpsbookRunFailing") is not None:
        assert time.monotonic() < deadline, "OpsbookRunFailing did not resolve within 30 s"
        time.sleep(0.5)
