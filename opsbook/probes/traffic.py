"""What Prometheus saw of the application's real traffic, and the alerts it has raised.

Traffic is the request counter the application exports, `http_requests_total` with a `status`
label (the reference backend's, chatapp/backend.py; the runbook's HighErrorRate alert reads the
same). Requests to /health and /metrics (its `handler` label) are not traffic: the probes and
Prometheus's own scrapes answer 200 while every user may get a 500.

Alerts are Prometheus's own view (/api/v1/alerts): `pending` while an expression holds for less
than its rule's `for:`, then `firing`.
"""

from __future__ import annotations

from msgspec import Struct

from opsbook.probes.prometheus import _api
from opsbook.targets import HttpTarget

REQUESTS = "http_requests_total"
# The `handler` values that are probes of the application, not its users' requests. A counter
# without a `handler` label matches `!~` too: all of its requests count.
NOT_TRAFFIC = "/health|/metrics"


class Traffic(Struct, frozen=True):
    """One scrape target's requests over a window (Prometheus's increase(): extrapolated to the
    window, so not whole numbers)."""

    job: str
    instance: str
    window_s: float
    requests: float
    server_errors: float  # answered 5xx

    @property
    def name(self) -> str:
        return f"{self.job}/{self.instance}"

    @property
    def server_error_ratio(self) -> float:
        return self.server_errors / self.requests if self.requests > 0 else 0.0

    @property
    def server_errors_per_s(self) -> float:
        return self.server_errors / self.window_s


def _increase(target: HttpTarget, matchers: str, window_s: float) -> dict[tuple[str, str], float]:
    # Milliseconds: PromQL's durations are whole numbers of a unit.
    window = f"{round(window_s * 1000)}ms"
    selector = f"{REQUESTS}{{{matchers}}}"
    # A series with one sample in the window (a Prometheus or a target scraped once) has no
    # increase() at all: it counts as none, rather than as a target that exports nothing.
    query = (
        f"sum by (job, instance) (increase({selector}[{window}]))"
        f" or sum by (job, instance) ({selector} * 0)"
    )
    series = _api(target, "/api/v1/query", {"query": query})["result"]
    return {
        (s["metric"].get("job", "?"), s["metric"].get("instance", "?")): float(s["value"][1])
        for s in series
    }


def traffic(target: HttpTarget, window_s: float) -> list[Traffic]:
    """Requests and 5xx answers of each scrape target that exports the request counter, over
    the last `window_s` seconds; none when no target exports it."""
    application = f'handler!~"{NOT_TRAFFIC}"'
    requests = _increase(target, application, window_s)
    errors = _increase(target, f'{application}, status=~"5.."', window_s)
    return [
        Traffic(job, instance, window_s, count, errors.get((job, instance), 0.0))
        for (job, instance), count in sorted(requests.items())
    ]


class Alert(Struct, frozen=True):
    name: str
    state: str  # "pending" or "firing"
    labels: dict[str, str]  # without alertname
    active_since: str  # when its expression began to hold (RFC 3339)
    summary: str = ""

    @property
    def shown(self) -> str:
        """`HighErrorRate{instance="10.0.0.5:3001", job="backend"}`, as Prometheus shows it."""
        labels = ", ".join(f'{k}="{v}"' for k, v in sorted(self.labels.items()) if k != "severity")
        return f"{self.name}{{{labels}}}" if labels else self.name


def alerts(target: HttpTarget) -> list[Alert]:
    """Every alert Prometheus holds now, pending or firing."""
    found = _api(target, "/api/v1/alerts")["alerts"]
    return [
        Alert(
            name=str(alert["labels"].get("alertname", "?")),
            state=str(alert.get("state", "")),
            labels={k: str(v) for k, v in alert["labels"].items() if k != "alertname"},
            active_since=str(alert.get("activeAt", "")),
            summary=str((alert.get("annotations") or {}).get("summary", "")),
        )
        for alert in found
    ]
