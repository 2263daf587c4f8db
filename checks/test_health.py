"""Services answer: the daily runbook's `curl -f .../health` for backend and frontend."""

from __future__ import annotations

import pytest

from opsbook import Severity, TargetUnreachable, check
from opsbook.targets import HttpTarget

pytestmark = [pytest.mark.daily, pytest.mark.health, pytest.mark.postdeploy]


@check("HEALTH-001", Severity.CRITICAL)
def test_health_endpoint_answers_ok(http_service: HttpTarget, thresholds, finding) -> None:
    """Service /health answers 200.

    Risk: users get errors; the service or one of its dependencies is down.
    """
    import requests

    path = http_service.spec.health_path
    try:
        response = http_service.get(path)
    except TargetUnreachable as exc:
        finding.observe("no answer", expected="200")
        raise AssertionError(f"{http_service.name}: GET {path}: {exc.reason}") from None
    except requests.RequestException as exc:
        finding.observe("no answer", expected="200")
        raise AssertionError(
            f"{http_service.name}: GET {path} got no answer: {type(exc).__name__} "
            f"(expected 200 within {thresholds.timeout_s:g}s)"
        ) from None
    finding.observe(response.status_code, expected=200)
    finding.attach("response", response.text[:2000])
    assert response.status_code == 200, (
        f"{http_service.name}: GET {path} answered {response.status_code} (expected 200)"
    )
