"""Services answer: the daily runbook's `curl -f .../health` for backend and frontend."""

from __future__ import annotations

import pytest

from opsbook import Severity, TargetUnreachable, check
from opsbook.probes.disclosure import disclosures
from opsbook.targets import HttpTarget
from remediation import services

pytestmark = [pytest.mark.daily, pytest.mark.health, pytest.mark.postdeploy]


@pytest.mark.predeploy
@check("HEALTH-001", Severity.CRITICAL, remediation=services.restart_service)
def test_health_endpoint_answers_ok(http_service: HttpTarget, finding) -> None:
    """Service /health answers 200.

    Risk: users get errors; the service or one of its dependencies is down.
    """
    path = http_service.spec.health_path
    try:
        response = http_service.health()
    except TargetUnreachable as exc:
        finding.observe("no answer", expected=200)
        raise AssertionError(f"{http_service.name}: GET {path}: {exc.reason}") from None
    finding.observe(response.status_code, expected=200)
    if response.status_code != 200:
        finding.attach("response", response.text[:2000])
    assert response.status_code == 200, (
        f"{http_service.name}: GET {path} answered {response.status_code} (expected 200)"
    )


@pytest.mark.predeploy
@check("HEALTH-002", Severity.HIGH)
def test_health_answers_within_budget(http_service: HttpTarget, thresholds, finding) -> None:
    """Service /health answers within the response-time budget.

    Risk: a slow health answer means slow chats, and load balancers drop the service.
    """
    budget = thresholds.response_time_s
    try:
        elapsed = http_service.health().elapsed.total_seconds()
    except TargetUnreachable as exc:
        finding.observe("no answer", expected=f"<= {budget:g}s")
        raise AssertionError(f"{http_service.name}: {exc.reason} (budget {budget:g}s)") from None
    finding.observe(round(elapsed, 4), expected=f"<= {budget:g}s")
    assert elapsed <= budget, (
        f"{http_service.name}: /health took {elapsed:.2f}s (budget {budget:g}s)"
    )


@check("HEALTH-003", Severity.MEDIUM)
def test_health_reveals_nothing(http_service: HttpTarget, finding) -> None:
    """Service /health reveals no versions, connection strings or stack traces.

    Risk: versions tell an attacker which exploit to use; a DSN or a stack trace shows where
    the data lives and how the code fails.
    """
    response = http_service.health()
    found = disclosures(response.text, response.headers)
    finding.observe(len(found), expected=0)
    if found:
        finding.attach("disclosed", "\n".join(found))
        finding.attach("response", response.text[:2000])
    assert not found, f"{http_service.name}: /health discloses {'; '.join(found)}"
