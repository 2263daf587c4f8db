"""The health and Prometheus probes against the sandbox's real services."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from opsbook.errors import NotEvaluated
from opsbook.inventory import HttpEndpoint, Inventory, Postgres, Redis
from opsbook.probes import health
from opsbook.probes import prometheus as probe
from opsbook.targets import HttpTarget, PostgresTarget, RedisTarget

pytestmark = pytest.mark.sandbox

TIMEOUT_S = 3.0


def closed_port() -> int:
    """A port nothing listens on (bound to find it, closed before use)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_a_healthy_stack_answers(sandbox_inventory: Inventory, backend: HttpTarget) -> None:
    answer = health.http_health(backend)
    assert answer.status_code == 200
    assert 0 < answer.elapsed_s < TIMEOUT_S
    assert health.answers_now(backend)
    assert health.answers_now(PostgresTarget("chatdb", sandbox_inventory.postgres["chatdb"], 3))
    assert health.answers_now(RedisTarget("queue", sandbox_inventory.redis["queue"], 3))


def test_nothing_listening_is_no_answer_with_a_reason(sandbox_inventory: Inventory) -> None:
    port = closed_port()
    http = HttpTarget("gone", HttpEndpoint(kind="backend", url=f"http://127.0.0.1:{port}"), 1)
    postgres = PostgresTarget("gone", Postgres(port=port), 1)
    redis = RedisTarget("gone", Redis(url=f"redis://127.0.0.1:{port}/0"), 1)
    assert not health.answers_now(http)
    assert not health.answers_now(postgres)
    assert not health.answers_now(redis)
    reply = health.redis_ping(redis)
    assert not reply.answered
    assert "refused" in reply.reason.lower()
    assert not health.postgres_select_one(postgres).answered


@pytest.fixture
def prometheus(sandbox_inventory: Inventory) -> Iterator[HttpTarget]:
    target = HttpTarget("prometheus", sandbox_inventory.http["prometheus"], TIMEOUT_S)
    yield target
    target.close()


@pytest.fixture
def backend(sandbox_inventory: Inventory) -> Iterator[HttpTarget]:
    target = HttpTarget("backend", sandbox_inventory.http["backend"], TIMEOUT_S)
    yield target
    target.close()


def test_prometheus_facts(prometheus: HttpTarget) -> None:
    targets = probe.scrape_targets(prometheus)
    assert {target.job for target in targets} >= {"backend"}
    groups = probe.rule_groups(prometheus)
    assert "chat-system" in {group.name for group in groups}
    assert probe.metrics_with_series(prometheus, {"up", "no_such_metric_total"}) == {"up"}
    assert probe.rule_files(prometheus).found


def test_a_prometheus_api_error_is_not_evaluated(backend: HttpTarget) -> None:
    # The backend answers, but it is no Prometheus: no "success" status to read facts from.
    with pytest.raises(NotEvaluated, match=r"^prometheus backend: GET /api/v1/rules answered"):
        probe.rule_groups(backend)


def test_metric_names_of_an_expression() -> None:
    expression = (
        'sum by (job) (rate(http_requests_total{status=~"5.."}[5m])) '
        "/ on (job) sum(rate(http_requests_total[5m])) > 0.1 or absent(queue_pending_messages)"
    )
    assert probe.metric_names(expression) == {"http_requests_total", "queue_pending_messages"}
    assert probe.absence_watched(expression) == {"queue_pending_messages"}
