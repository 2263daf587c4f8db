"""Monitoring itself: Prometheus answers and scrapes, Grafana's database is fine."""

from __future__ import annotations

import pytest

from opsbook import Finding, HttpTarget, Severity, TargetUnreachable, check
from opsbook.probes.health import http_health
from opsbook.probes.prometheus import scrape_targets
from opsbook.remediation import services

pytestmark = [pytest.mark.daily, pytest.mark.observability]

BODY_CHARS = 2000


@check("OBS-001", Severity.HIGH, remediation=services.restart_service)
def test_prometheus_answers(prometheus: HttpTarget, finding: Finding) -> None:
    """Prometheus answers its health endpoint.

    Risk: no metrics and no alerts: failures go unseen.
    """
    path = prometheus.spec.health_path
    try:
        answer = http_health(prometheus)
    except TargetUnreachable as exc:
        finding.observe("no answer", expected="200")
        finding.fail(exc.reason)
    finding.expect(
        answer.status_code, "200", ok=answer.status_code == 200,
        problem=f"{path} answered {answer.status_code}",
    )  # fmt: skip


@check("OBS-002", Severity.HIGH, remediation=services.restart_scrape_targets)
def test_every_scrape_target_is_up(prometheus: HttpTarget, finding: Finding) -> None:
    """Every Prometheus scrape target is up.

    Risk: a target that is down is a service that is down, or one whose alerts cannot fire.
    """
    # A target restarted since Prometheus last scraped it is judged on the next scrape, when
    # that is due within the timeout (a deploy's restart is not an outage).
    targets = scrape_targets(prometheus, next_scrape_within_s=prometheus.timeout)
    down = [target.describe() for target in targets if target.up != "1"]
    finding.attach("up", {target.name: target.up for target in targets})
    if not targets:
        finding.observe("0/0 up", expected="all up")
        finding.fail("no scrape targets at all (up has no series)")
    finding.expect(
        f"{len(targets) - len(down)}/{len(targets)} up", "all up", ok=not down,
        problem=f"down: {', '.join(down)}",
    )  # fmt: skip


@check("OBS-003", Severity.MEDIUM)
def test_grafana_database_ok(grafana: HttpTarget, finding: Finding) -> None:
    """Grafana reports its database ok.

    Risk: dashboards and alert rules stored in Grafana are unavailable.
    """
    expected = "200 database=ok"
    try:
        answer = http_health(grafana)
    except TargetUnreachable as exc:
        finding.observe("no answer", expected=expected)
        finding.fail(exc.reason)
    database = answer.field("database")
    healthy = answer.status_code == 200 and database == "ok"
    if not healthy:
        finding.attach("response", answer.text[:BODY_CHARS])
    finding.expect(
        f"{answer.status_code} database={database}", expected, ok=healthy,
        problem=f"/api/health answered {answer.status_code} with database={database!r}",
    )  # fmt: skip
