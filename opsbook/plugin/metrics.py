"""Results as metrics: a Prometheus textfile and/or a push to a Pushgateway, so that dashboards
show every check and a missed or failing cron run alerts (alerts/chat-system.rules.yml).

    --metrics-textfile=/var/lib/node_exporter/textfile/opsbook.prom
    --pushgateway=http://pushgateway:9091   (grouped by deployment, selection and instance)

or, for every run against a deployment, its inventory's `metrics: {textfile, pushgateway}` (an
option given on the command line wins over the inventory's place of the same kind).

The Pushgateway is asked once, in the background, while the checks run: one that gave no answer
within the inventory's timeout is not pushed to at the end (one line says so), so that a run
against a deployment that hangs whole, its Pushgateway included, still ends within one timeout
plus a few seconds (docs/operating.md).

Series (labels: selection; per check also check_id, target, severity):

    opsbook_check_success               1 passed, fixed or waived; 0 failed or not evaluated
    opsbook_check_duration_seconds
    opsbook_check_observed_value        when the observed value is a number
    opsbook_last_run_timestamp_seconds  when the run started
    opsbook_last_run_duration_seconds
    opsbook_last_run_success            1 when the run's exit code is 0
    opsbook_last_run_exit_code
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
from collections.abc import Generator
from typing import Any

import pytest

from opsbook.outcome import Outcome
from opsbook.plugin.keys import FINDINGS, INVENTORY, REDACTOR, FindingRow
from opsbook.pushgateway import Gateway
from opsbook.secrets import Redactor

GOOD = {o for o in Outcome if o.good}
BAD = {o for o in Outcome if o.bad}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("opsbook")
    group.addoption("--metrics-textfile", metavar="PATH", help="write the run's metrics here")
    group.addoption("--pushgateway", metavar="URL", help="push the run's metrics to this gateway")


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _registry(rows: list[FindingRow], selection: str, started: float, status: int) -> Any:
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    labels = ["selection", "check_id", "target", "severity"]
    success = Gauge("opsbook_check_success", "1 when the check passed", labels, registry=registry)
    duration = Gauge("opsbook_check_duration_seconds", "check duration", labels, registry=registry)
    observed = Gauge("opsbook_check_observed_value", "measured value", labels, registry=registry)
    for row in rows:
        if row.outcome not in GOOD | BAD:
            continue
        key = (selection, row.check_id, row.target or "", row.severity)
        success.labels(*key).set(1 if row.outcome in GOOD else 0)
        duration.labels(*key).set(row.duration_s)
        value = _number(row.observed)
        if value is not None:
            observed.labels(*key).set(value)
    run_labels = ["selection"]
    for name, text, value in (
        ("opsbook_last_run_timestamp_seconds", "when the last run started", started),
        ("opsbook_last_run_duration_seconds", "how long it took", time.time() - started),
        ("opsbook_last_run_success", "1 when its exit code was 0", int(status == 0)),
        ("opsbook_last_run_exit_code", "its exit code", status),
    ):
        Gauge(name, text, run_labels, registry=registry).labels(selection).set(value)
    return registry


class GatewayProbe:
    """Whether the Pushgateway answers: one GET, in a thread of its own, started with the run."""

    def __init__(self, gateway: Gateway, timeout: float) -> None:
        self.gateway = gateway
        self.timeout = timeout
        self.silent = False
        self._thread = threading.Thread(target=self._ask, name="opsbook-pushgateway", daemon=True)
        self._thread.start()

    def _ask(self) -> None:
        try:
            self.gateway.get("/-/ready", self.timeout)
        except urllib.error.HTTPError:
            pass  # an answer: the push says what is wrong, if anything
        except (OSError, ValueError) as exc:
            self.silent = isinstance(exc, TimeoutError) or isinstance(
                getattr(exc, "reason", None), TimeoutError
            )

    def answers(self) -> bool:
        """False when the gateway gave no answer within the timeout (waits for the answer)."""
        self._thread.join(self.timeout + 1)
        return not (self.silent or self._thread.is_alive())


def _destinations(config: pytest.Config) -> tuple[Any, Gateway | None, float]:
    """Where the run's metrics go (textfile, gateway), and the deployment's timeout."""
    inventory = config.stash[INVENTORY]
    textfile = config.getoption("metrics_textfile")
    address = config.getoption("pushgateway")
    timeout = 3.0
    if inventory is not None:
        textfile = textfile or inventory.metrics.textfile
        address = address or inventory.metrics.pushgateway
        timeout = inventory.thresholds.timeout_s
    try:
        gateway = Gateway.parse(address) if address else None
    except ValueError as exc:
        raise pytest.UsageError(f"--pushgateway: {exc}") from None
    return textfile, gateway, timeout


def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    config.stash[_STARTED] = time.time()
    config.stash[_NOT_SENT] = []
    _, gateway, timeout = _destinations(config)
    if gateway and not hasattr(config, "workerinput"):
        config.stash[_GATEWAY] = GatewayProbe(gateway, timeout)


_STARTED = pytest.StashKey[float]()
_NOT_SENT = pytest.StashKey[list[str]]()
_GATEWAY = pytest.StashKey[GatewayProbe]()


@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish(session: pytest.Session) -> Generator[None, None, None]:
    yield
    config = session.config
    inventory = config.stash[INVENTORY]
    textfile, gateway, timeout = _destinations(config)
    rows = list(config.stash[FINDINGS].rows.values())
    if not (textfile or gateway) or not rows or hasattr(config, "workerinput"):
        return
    selection = config.option.markexpr or "all"
    registry = _registry(rows, selection, config.stash[_STARTED], int(session.exitstatus))
    if textfile:
        from prometheus_client import write_to_textfile

        try:
            write_to_textfile(str(textfile), registry)  # written aside and renamed: never half-read
        except OSError as exc:
            # As for a push: the run's result stands; the stale file shows as a missed run.
            config.stash[_NOT_SENT].append(f"could not write metrics to {textfile}: {exc}")
    probe = config.stash.get(_GATEWAY, None)
    if gateway and probe is not None and not probe.answers():
        config.stash[_NOT_SENT].append(
            f"did not push metrics to {gateway}: it gave no answer within {timeout:g} s"
        )
    elif gateway:
        # One group per deployment, selection and runner: production's daily run never
        # replaces staging's, nor the audit run the daily one.
        grouping = {
            "deployment": inventory.name if inventory is not None else "",
            "selection": selection,
            "instance": socket.gethostname(),
        }
        try:
            gateway.push("opsbook", registry, grouping, timeout)
        except OSError as exc:
            # The run's own result stands; a missing push shows as a missed run in alerting.
            config.stash[_NOT_SENT].append(f"could not push metrics to {gateway}: {exc}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    redact = terminalreporter.config.stash.get(REDACTOR, None) or Redactor()
    for line in terminalreporter.config.stash.get(_NOT_SENT, []):
        terminalreporter.write_sep("-", redact(f"opsbook: {line}"), yellow=True)
