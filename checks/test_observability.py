"""Monitoring itself: Prometheus answers and scrapes, Grafana's database is fine."""

from __future__ import annotations

import pytest

from opsbook import Severity, TargetUnreachable, check
from opsbook.targets import HttpTarget
from remediation import services

pytestmark = [pytest.mark.daily, pytest.mark.observability]


@check("OBS-001", Severity.HIGH, remediation=services.restart_service)
def test_prometheus_answers(prometheus: HttpTarget, finding) -> None:
    """Prometheus answers its health endpoint.

    Risk: no metrics and no alerts: failures go unseen.
    """
    try:
        response = prometheus.health()
    except TargetUnreachable as exc:
        finding.observe("no answer", expected=200)
        raise AssertionError(f"prometheus {prometheus.name}: {exc.reason}") from None
    finding.observe(response.status_code, expected=200)
    assert response.status_code == 200, (
        f"prometheus {prometheus.name}: {prometheus.spec.health_path} answered "
        f"{response.status_code} (expected 200)"
    )


@check("OBS-002", Severity.HIGH)
def test_every_scrape_target_is_up(prometheus: HttpTarget, finding) -> None:
    """Every Prometheus scrape target is up.

    Risk: a target that is down is a service that is down, or one whose alerts cannot fire.
    """
    answer = prometheus.get("/api/v1/query", params={"query": "up"}).json()
    assert answer.get("status") == "success", (
        f"prometheus {prometheus.name}: query failed: {answer}"
    )
    series = answer["data"]["result"]
    down = [
        f"{s['metric'].get('job', '?')}/{s['metric'].get('instance', '?')}"
        for s in series
        if s["value"][1] != "1"
    ]
    finding.observe(f"{len(series) - len(down)}/{len(series)} up", expected="all up")
    finding.attach(
        "up",
        {f"{s['metric'].get('job')}/{s['metric'].get('instance')}": s["value"][1] for s in series},
    )
    assert series, f"prometheus {prometheus.name}: no scrape targets at all (up has no series)"
    assert not down, f"prometheus {prometheus.name}: down: {', '.join(down)} (expected up == 1)"


@check("OBS-003", Severity.MEDIUM)
def test_grafana_database_ok(grafana: HttpTarget, finding) -> None:
    """Grafana reports its database ok.

    Risk: dashboards and alert rules stored in Grafana are unavailable.
    """
    try:
        response = grafana.health()
    except TargetUnreachable as exc:
        finding.observe("no answer", expected="database ok")
        raise AssertionError(f"grafana {grafana.name}: {exc.reason}") from None
    try:
        database = response.json().get("database")
    except ValueError:
        database = None
    finding.observe(f"{response.status_code} database={database}", expected="200 database=ok")
    if database != "ok" or response.status_code != 200:
        finding.attach("response", response.text[:2000])
    healthy = response.status_code == 200 and database == "ok"
    assert healthy, (
        f"grafana {grafana.name}: /api/health answered {response.status_code} "
        f"with database={database!r} (expected 200 and 'ok')"
    )
