"""Redis, the message queue: the runbook's `redis-cli ping` and queue depths."""

from __future__ import annotations

import pytest

from opsbook import Severity, TargetUnreachable, check
from opsbook.targets import RedisTarget

pytestmark = [pytest.mark.daily, pytest.mark.queue, pytest.mark.postdeploy]


@check("QUEUE-001", Severity.CRITICAL)
def test_redis_answers_ping(redis_target: RedisTarget, finding) -> None:
    """Redis answers PING.

    Risk: no message can be queued; chat requests fail.
    """
    import redis

    try:
        redis_target.client().ping()
    except TargetUnreachable as exc:
        finding.observe("no PONG", expected="PONG")
        raise AssertionError(f"redis {redis_target.name}: {exc.reason}") from None
    except redis.RedisError as exc:
        finding.observe("no PONG", expected="PONG")
        raise AssertionError(f"redis {redis_target.name}: {exc}") from None
    finding.observe("PONG", expected="PONG")
