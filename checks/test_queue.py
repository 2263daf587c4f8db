"""Redis, the message queue: the runbook's `redis-cli ping`, memory, depths and progress."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from opsbook import Severity, TargetUnreachable, check
from opsbook.probes.queue import (
    DrainSample,
    RedisMemory,
    UnreadableMessage,
    enqueued_at,
    processed_between,
)
from opsbook.targets import PostgresTarget, RedisTarget
from remediation import queue

if TYPE_CHECKING:
    from redis import Redis

pytestmark = [pytest.mark.daily, pytest.mark.queue, pytest.mark.postdeploy]


EVIDENCE_MESSAGES = 3
EVIDENCE_CHARS = 300
MIB = 1024 * 1024


def _excerpt(raw: str) -> str:
    return raw if len(raw) <= EVIDENCE_CHARS else raw[:EVIDENCE_CHARS] + "..."


@pytest.mark.predeploy
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


@check("QUEUE-002", Severity.HIGH)
def test_redis_memory_below_limit(
    redis: Redis, redis_target: RedisTarget, thresholds, finding
) -> None:
    """Redis uses less than the allowed share of its maxmemory.

    Risk: at maxmemory Redis refuses new messages (noeviction) or drops queued ones (eviction);
    without maxmemory it grows until the host runs out of memory.
    """
    info = redis.info("memory")
    memory = RedisMemory.from_info(info)
    allowed = thresholds.redis_memory_percent
    expected = f"< {allowed:g}% of maxmemory"
    if memory.percent is None or memory.percent >= allowed:
        finding.attach(
            "INFO memory",
            {
                key: info.get(key)
                for key in (
                    "used_memory_human",
                    "used_memory_peak_human",
                    "maxmemory_human",
                    "maxmemory_policy",
                    "mem_fragmentation_ratio",
                )
            },
        )
    if memory.percent is None:
        finding.observe("maxmemory 0 (no limit)", expected=expected)
        raise AssertionError(
            f"redis {redis_target.name}: maxmemory is not set: Redis would grow until the host "
            f"runs out of memory (using {memory.used / MIB:.1f} MiB)"
        )
    finding.observe(round(memory.percent, 1), expected=expected)
    assert memory.percent < allowed, (
        f"redis {redis_target.name}: memory use {memory.percent:.0f}% of maxmemory "
        f"({memory.used / MIB:.1f} of {memory.maxmemory / MIB:.1f} MiB, max {allowed:g}%, "
        f"policy {memory.policy})"
    )


@check("QUEUE-003", Severity.HIGH, remediation=queue.scale_workers)
def test_message_queue_backlog_is_small(
    redis: Redis, redis_target: RedisTarget, thresholds, finding
) -> None:
    """The message queue holds no more than the allowed backlog.

    Risk: users wait longer and longer for answers; the backlog grows Redis towards maxmemory.
    """
    queue = redis_target.spec.queues.pending
    depth = redis.llen(queue)
    allowed = thresholds.queue_backlog
    finding.observe(depth, expected=f"<= {allowed}")
    if depth > allowed:
        oldest = redis.lrange(queue, -EVIDENCE_MESSAGES, -1)
        finding.attach("oldest messages", [_excerpt(raw) for raw in reversed(oldest)])
    assert depth <= allowed, (
        f"redis {redis_target.name}: {queue} holds {depth} messages (max {allowed})"
    )


@check("QUEUE-004", Severity.MEDIUM, remediation=queue.reprocess_dead_letters)
def test_dead_letter_queue_is_small(
    redis: Redis, redis_target: RedisTarget, thresholds, finding
) -> None:
    """The dead-letter queue holds no more than the allowed messages.

    Risk: messages that failed processing are never answered; many of them point at a bug or a
    broken client.
    """
    queue = redis_target.spec.queues.dead_letter
    depth = redis.llen(queue)
    allowed = thresholds.dead_letter_max
    finding.observe(depth, expected=f"<= {allowed}")
    if depth > allowed:
        newest = redis.lrange(queue, 0, EVIDENCE_MESSAGES - 1)
        finding.attach("newest dead letters", [_excerpt(raw) for raw in newest])
    assert depth <= allowed, (
        f"redis {redis_target.name}: {queue} holds {depth} messages (max {allowed})"
    )


@check("QUEUE-005", Severity.HIGH)
def test_oldest_message_is_recent(
    redis: Redis, redis_target: RedisTarget, thresholds, finding
) -> None:
    """The oldest message waiting in the queue was enqueued recently.

    Risk: a user has waited minutes for an answer; the worker is stuck, slow, or stopped.
    """
    queue = redis_target.spec.queues.pending
    allowed = thresholds.oldest_message_age_s
    expected = f"< {allowed:g} s"
    # The worker takes from the right: the right end is the message that has waited longest.
    oldest = redis.lindex(queue, -1)
    if oldest is None:
        finding.observe("queue empty", expected=expected)
        return
    try:
        age = time.time() - enqueued_at(oldest)
    except UnreadableMessage as exc:
        finding.observe("unreadable", expected=expected)
        finding.attach("oldest message", _excerpt(oldest))
        raise AssertionError(
            f"redis {redis_target.name}: the oldest message in {queue} has no readable "
            f"enqueued_at ({exc}), so its age is unknown (max {allowed:g} s)"
        ) from None
    finding.observe(round(age, 1), expected=expected)
    if age >= allowed:
        finding.attach("oldest message", _excerpt(oldest))
    assert age < allowed, (
        f"redis {redis_target.name}: the oldest message in {queue} waits for {age:.0f} s "
        f"(max {allowed:g} s)"
    )


@pytest.mark.predeploy
@check("QUEUE-006", Severity.CRITICAL, remediation=queue.restart_worker)
def test_message_queue_is_draining(
    redis: Redis, redis_target: RedisTarget, thresholds, finding
) -> None:
    """Messages waiting in the queue are being processed.

    Risk: the worker is stopped, stuck or cannot store messages; no user gets an answer.
    """
    queues = redis_target.spec.queues
    expected = f"> 0 processed in {thresholds.drain_sample_s:g} s while messages wait"

    def sample() -> DrainSample:
        # One round trip, so that both lengths describe the same moment.
        pipe = redis.pipeline(transaction=False)
        pipe.llen(queues.processed).lindex(queues.processed, 0).llen(queues.pending)
        processed, newest, waiting = pipe.execute()
        return DrainSample(processed, newest, waiting)

    before = sample()
    if before.waiting == 0:
        # Nothing to drain; the daily run should not pay for the wait.
        finding.observe({"processed": None, "waiting": 0}, expected=expected)
        return
    time.sleep(thresholds.drain_sample_s)
    after = sample()
    processed = processed_between(before, after)
    finding.observe({"processed": processed, "waiting": after.waiting}, expected=expected)
    stalled = processed == 0 and after.waiting > 0
    if stalled:
        finding.attach(
            "samples",
            {
                "before": {"processed": before.processed, "waiting": before.waiting},
                "after": {"processed": after.processed, "waiting": after.waiting},
            },
        )
    assert not stalled, (
        f"redis {redis_target.name}: {queues.pending} is not draining: 0 messages processed "
        f"in {thresholds.drain_sample_s:g} s while {after.waiting} wait (expected > 0)"
    )


@check("QUEUE-007", Severity.HIGH)
def test_messages_were_stored_recently(
    redis: Redis, redis_target: RedisTarget, postgres: PostgresTarget, thresholds, finding
) -> None:
    """Messages were stored in the database recently, if any are waiting.

    Risk: the pipeline from queue to database is broken; users' messages are never stored or
    answered. An idle system with nothing queued is fine.
    """
    window = thresholds.processed_window_s
    (stored,) = postgres.query(
        'SELECT count(*) FROM messages WHERE "timestamp" > now() - make_interval(secs => %s)',
        (window,),
    )[0]
    queue = redis_target.spec.queues.pending
    waiting = redis.llen(queue)
    finding.observe(stored, expected=f"> 0 in the last {window:g} s while messages wait")
    stalled = stored == 0 and waiting > 0
    if stalled:
        oldest = redis.lindex(queue, -1)
        finding.attach("oldest waiting message", _excerpt(oldest or ""))
    assert not stalled, (
        f"redis {redis_target.name}: {waiting} messages wait in {queue} but postgres "
        f"{postgres.name} stored 0 in the last {window:g} s (expected > 0)"
    )
