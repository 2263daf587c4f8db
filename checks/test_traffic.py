"""Traffic and alerts, not only /health: the runbook's service-down symptom is "unreachable or
5xx", and an application can answer 500 to every user while its /health says 200.

Both checks read Prometheus: the server errors of the application's real traffic (OBS-004), and
the alerts it is firing (ALERT-004).
"""

from __future__ import annotations

import datetime as dt

import pytest

from opsbook import Finding, HttpTarget, Severity, Thresholds, Unit, check
from opsbook.plugin.keys import Prop
from opsbook.plugin.waivers import WAIVERS
from opsbook.probes.traffic import REQUESTS, alerts, traffic
from opsbook.waivers import Waiver, Waivers

pytestmark = [pytest.mark.daily, pytest.mark.observability]

ALERTS_CHECK = "ALERT-004"  # the id of test_no_alert_is_firing, which its waivers name
# Alerts about opsbook's own runs carry source="opsbook" (alerts/chat-system.rules.yml).
OWN_RUNS_SOURCE = "opsbook"


@pytest.mark.health
@check("OBS-004", Severity.HIGH)
def test_real_traffic_has_few_server_errors(
    prometheus: HttpTarget, thresholds: Thresholds, finding: Finding
) -> None:
    """The application's real traffic has few server errors (5xx), as Prometheus counted it.

    Risk: an application that answers 500 to its users while /health says 200 passes every
    health check; the runbook's service-down symptom is "unreachable or 5xx". Two limits: the
    runbook's rate (thresholds.http_5xx_rate, 5xx per second), which a busy deployment reaches
    first, and a share of the requests (thresholds.http_5xx_ratio), which catches a small
    deployment failing every request well under that rate. Requests to /health and /metrics
    are not counted: probes and scrapes are not users.
    """
    window = thresholds.traffic_window_s
    seen = traffic(prometheus, window)
    if not seen:
        pytest.skip(f"{finding.label}: no scrape target exports {REQUESTS}: no traffic to judge")
    finding.attach(
        "traffic",
        {
            t.name: {"requests": round(t.requests, 1), "5xx": round(t.server_errors, 1)}
            for t in seen
        },
    )
    served = [t for t in seen if t.requests > 0]
    if not served:
        pytest.skip(
            f"{finding.label}: no application requests in the last {window:g} s (the "
            "inventory's thresholds.traffic_window_s): nothing to compare"
        )
    ratio, rate = thresholds.http_5xx_ratio, thresholds.http_5xx_rate
    failing = [
        f"{t.name}: {t.server_errors:.0f} of {t.requests:.0f} requests answered 5xx in the "
        f"last {window:g} s ({100 * t.server_error_ratio:.0f} %, {t.server_errors_per_s:.2g}/s)"
        for t in served
        if t.server_error_ratio > ratio or t.server_errors_per_s > rate
    ]
    worst = max(t.server_error_ratio for t in served)
    finding.expect(
        round(100 * worst, 1), f"<= {100 * ratio:g} % of requests and <= {rate:g} 5xx/s",
        ok=not failing, unit=Unit.PERCENT, problem="; ".join(failing),
    )  # fmt: skip


@pytest.fixture
def waivers(pytestconfig: pytest.Config) -> Waivers | None:
    """The run's waivers file (an alert is waived by naming it as the waiver's target)."""
    return pytestconfig.stash.get(WAIVERS, None)


def _alert_waiver(waivers: Waivers | None, alert: str) -> Waiver | None:
    # Only a waiver that names the alert: one for the whole check is the plugin's to apply.
    found = waivers.find(ALERTS_CHECK, alert) if waivers is not None else None
    return found if found is not None and found.target == alert else None


@check("ALERT-004", Severity.HIGH)
def test_no_alert_is_firing(
    prometheus: HttpTarget,
    finding: Finding,
    waivers: Waivers | None,
    request: pytest.FixtureRequest,
) -> None:
    """No alert is firing in Prometheus.

    Risk: a firing alert is a problem the runbooks already describe, happening now; a daily run
    that stays green beside it tells people all is well. Pending alerts (their condition holds
    for less than the rule's `for:`) are listed, not failed. An alert is accepted by a waiver
    whose target is the alert's name (check: ALERT-004, target: HighMemoryUsage), or by the
    inventory's expected_alerts of this Prometheus: alerts that fire by design there. Alerts
    about opsbook's own runs (label source="opsbook": OpsbookRunMissing, OpsbookRunFailing)
    are listed, not judged: this run is the news they wait for, and judging the last run's
    failure again would fail every later run, even once all is well.
    """
    held = alerts(prometheus)
    own = [a for a in held if a.labels.get("source") == OWN_RUNS_SOURCE]
    held = [a for a in held if a.labels.get("source") != OWN_RUNS_SOURCE]
    firing = [a for a in held if a.state == "firing"]
    expected = set(prometheus.spec.expected_alerts)
    today = dt.date.today()
    waived: dict[str, Waiver] = {}
    problems: list[str] = []
    for alert in firing:
        if alert.name in expected:
            continue
        waiver = _alert_waiver(waivers, alert.name)
        if waiver is not None and not waiver.expired(today):
            waived[alert.shown] = waiver
        elif waiver is not None:
            problems.append(f"{alert.shown} (its waiver expired on {waiver.expires})")
        else:
            problems.append(alert.shown)
    finding.attach(
        "alerts",
        {
            "firing": [f"{a.shown}: {a.summary}" for a in firing],
            "pending": [a.shown for a in held if a.state == "pending"],
            "expected here (inventory)": sorted(expected),
            "about opsbook's runs (not judged)": [f"{a.shown} ({a.state})" for a in own],
            "waived": {shown: waiver.line() for shown, waiver in waived.items()},
        },
    )
    finding.expect(
        [a.shown for a in firing], "none firing, expected and waived alerts aside",
        ok=not problems, problem=f"firing: {', '.join(problems)}",
    )  # fmt: skip
    if waived:
        # Only waived alerts fire: the check is waived, as a waiver of the whole check would
        # make it, with the waivers in the report.
        lines = "; ".join(f"{shown}: {waiver.line()}" for shown, waiver in waived.items())
        message = f"{finding.label}: firing: {', '.join(waived)}"
        request.node.user_properties.append((Prop.WAIVER, lines))
        request.node.user_properties.append((Prop.WAIVED_MESSAGE, message))
        pytest.xfail(f"waived: {lines}")
