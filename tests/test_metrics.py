"""Results as metrics: the textfile for node exporter, and a push to a real Pushgateway."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest
import requests

CHECKS = '''
import pytest
from opsbook import Severity, check

pytestmark = pytest.mark.daily

@check("M-001", Severity.HIGH)
def test_ok(finding):
    """Passes with a measured value."""
    finding.observe(42)

@check("M-002", Severity.LOW)
def test_broken(finding):
    """Fails."""
    assert False, "x: broken (expected fine)"
'''


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makeini("[pytest]\naddopts = --strict-markers -p no:cacheprovider\n")
    pytester.makeconftest('pytest_plugins = ["opsbook.plugin", "fixtures.targets"]\n')
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
    assert (
        'opsbook_check_success{check_id="M-002",selection="daily",severity="low",target=""} 0.0'
        in text
    )
    assert 'opsbook_last_run_success{selection="daily"} 0.0' in text
    assert 'opsbook_last_run_exit_code{selection="daily"} 1.0' in text


@pytest.fixture
def pushgateway() -> Iterator[str]:
    """A real Prometheus Pushgateway (Debian's prometheus-pushgateway) on a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    storage = tempfile.mkdtemp(prefix="opsbook-pushgateway-")
    process = subprocess.Popen(
        ["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{port}",
         f"--persistence.file={storage}/metrics"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if requests.get(f"{url}/-/ready", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "pushgateway did not start"
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_push_to_a_real_pushgateway(suite: pytest.Pytester, pushgateway: str) -> None:
    assert suite.runpytest("-m", "daily", f"--pushgateway={pushgateway}").ret == 1
    text = requests.get(f"{pushgateway}/metrics", timeout=3).text
    assert 'opsbook_last_run_success{instance="",job="opsbook",selection="daily"} 0' in text
    assert 'opsbook_check_success{check_id="M-001",instance="",job="opsbook"' in text


def test_an_unreachable_pushgateway_is_one_line_not_a_crash(suite: pytest.Pytester) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    result = suite.runpytest("-m", "daily", f"--pushgateway=http://127.0.0.1:{closed}")
    assert result.ret == 1  # the checks' verdict, not the push's
    result.stdout.fnmatch_lines(["opsbook: could not push metrics to http://127.0.0.1:*"])
