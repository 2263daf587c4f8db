"""Redis, the message queue: the runbook's `redis-cli ping`, memory, depths and progress.

Evidence names messages by id, age and size (`probe.QueuedMessage`), never by content: a
queued message is a user's text and user id, and reports travel further than Redis does.
"""

from __future__ import annotations

import pytest

from opsbook import Finding, PostgresTarget, RedisTarget, Severity, Thresholds, Unit, check
from opsbook.probes import queue as probe
from opsbook.probes.health import redis_ping
from opsbook.probes.postgres import messages_stored_within
from opsbook.remediation import queue, services

pytestmark = [pytest.mark.daily, pytest.mark.queue, pytest.mark.postdeploy]

EVIDENCE_MESSAGES = 3


@pytest.mark.predeploy
@check("QUEUE-001", Severity.CRITICAL, remediation=services.restart_service)
def test_redis_answers_ping(redis_target: RedisTarget, finding: Finding) -> None:
    """Redis answers PING.

    Risk: no message can be queued; chat requests fail.
    """
    reply = redis_ping(redis_target)
    shown = "PONG" if reply.answered else "no PONG"
    finding.expect(shown, "PONG", ok=reply.answered, problem=reply.reason)


@check("QUEUE-002", Severity.HIGH, remediation=queue.trim_queue_memory)
def test_redis_memory_below_limit(
    redis_target: RedisTarget, thresholds: Thresholds, finding: Finding
) -> None:
    """Redis uses less than the allowed share of its maxmemory.

    Risk: at maxmemory Redis refuses new messages (noeviction) or drops queued ones (eviction);
    without maxmemory it grows until the host runs out of memory.
    """
    memory = probe.memory(redis_target)
    allowed = thresholds.redis_memory_percent
    used, limit = Unit.MEBIBYTES.show(memory.used_mib), Unit.MEBIBYTES.show(memory.maxmemory_mib)
    percent = memory.used_percent
    if percent is None or percent >= allowed:
        finding.attach("INFO memory", memory.evidence)
    expected = f"< {allowed:g} % of maxmemory"
    if percent is None:
        finding.observe("maxmemory 0 (no limit)", expected=expected)
        finding.fail(
            "maxmemory is not set: Redis would grow until the host runs out of memory "
            f"(using {used})"
        )
    finding.expect(
        round(percent, 1), expected, ok=percent < allowed, unit=Unit.PERCENT,
        problem=f"memory use {percent:.0f} % of maxmemory ({used} of {limit}, "
        f"policy {memory.policy})",
    )  # fmt: skip


@check("QUEUE-003", Severity.HIGH, remediation=queue.scale_workers)
def test_message_queue_backlog_is_small(
    redis_target: RedisTarget, thresholds: Thresholds, finding: Finding
) -> None:
    """The message queue holds no more than the allowed backlog.

    Risk: users wait longer and longer for answers; the backlog grows Redis towards maxmemory.
    """
    pending = redis_target.spec.queues.pending
    depth, allowed = probe.depth(redis_target, pending), thresholds.queue_backlog
    if depth > allowed:
        oldest = probe.messages(redis_target, pending, -EVIDENCE_MESSAGES, -1)
        finding.attach("oldest messages", list(reversed(oldest)))
    finding.expect(
        depth, f"<= {allowed}", ok=depth <= allowed, unit=Unit.COUNT,
        problem=f"{pending} holds {depth} messages",
    )  # fmt: skip


@check("QUEUE-004", Severity.MEDIUM, remediation=queue.reprocess_dead_letters)
def test_dead_letter_queue_is_small(
    redis_target: RedisTarget, thresholds: Thresholds, finding: Finding
) -> None:
    """The dead-letter queue holds no more than the allowed messages.

    Risk: messages that failed processing are never answered; many of them point at a bug or a
    broken client.
    """
    dead = redis_target.spec.queues.dead_letter
    depth, allowed = probe.depth(redis_target, dead), thresholds.dead_letter_max
    if depth > allowed:
        newest = probe.messages(redis_target, dead, 0, EVIDENCE_MESSAGES - 1)
        finding.attach("newest dead letters", newest)
    finding.expect(
        depth, f"<= {allowed}", ok=depth <= allowed, unit=Unit.COUNT,
        problem=f"{dead} holds {depth} messages",
    )  # fmt: skip


@check("QUEUE-005", Severity.HIGH, remediation=queue.restart_consumer)
def test_oldest_message_is_recent(
    redis_target: RedisTarget, thresholds: Thresholds, finding: Finding
) -> None:
    """The oldest message waiting in the queue was enqueued recently.

    Risk: a user has waited minutes for an answer; the worker is stuck, slow, or stopped.
    """
    pending = redis_target.spec.queues.pending
    allowed = thresholds.oldest_message_age_s
    expected = f"< {allowed:g} s"
    oldest = probe.oldest_message(redis_target, pending)
    if oldest is None:
        finding.observe("queue empty", expected=expected)
        return
    fresh = oldest.age_s is not None and oldest.age_s < allowed
    if not fresh:
        finding.attach("oldest message", oldest)
    if oldest.age_s is None:
        finding.observe("unreadable", expected=expected)
        finding.fail(
            f"the oldest message in {pending} has no readable enqueued_at "
            f"({oldest.unreadable}), so its age is unknown (expected {expected})"
        )
    finding.expect(
        round(oldest.age_s, 1), expected, ok=fresh, unit=Unit.SECONDS,
        problem=f"the oldest message in {pending} waits for {oldest.age_s:.0f} s",
    )  # fmt: skip


@pytest.mark.predeploy
@check("QUEUE-006", Severity.CRITICAL, remediation=queue.restart_consumer)
def test_message_queue_is_draining(
    redis_target: RedisTarget, thresholds: Thresholds, finding: Finding
) -> None:
    """Messages waiting in the queue are being processed.

    Risk: the worker is stopped, stuck or cannot store messages; no user gets an answer.
    """
    queues, window = redis_target.spec.queues, thresholds.drain_sample_s
    drain = probe.drain(redis_target, queues, window)
    if drain.stalled:
        finding.attach("samples", {"before": drain.before, "after": drain.after})
    finding.expect(
        {"processed": drain.processed, "waiting": drain.waiting},
        f"> 0 processed in {window:g} s while messages wait",
        ok=not drain.stalled,
        problem=f"{queues.pending} is not draining: 0 messages processed in {window:g} s "
        f"while {drain.waiting} wait",
    )


@check("QUEUE-007", Severity.HIGH, remediation=queue.restart_consumer)
def test_messages_were_stored_recently(
    redis_target: RedisTarget, postgres: PostgresTarget, thresholds: Thresholds, finding: Finding
) -> None:
    """Messages were stored in the database recently, if any are waiting.

    Risk: the pipeline from queue to database is broken; users' messages are never stored or
    answered. An idle system with nothing queued is fine.
    """
    window, pending = thresholds.processed_window_s, redis_target.spec.queues.pending
    stored = messages_stored_within(postgres, window)
    waiting = probe.depth(redis_target, pending)
    stalled = stored == 0 and waiting > 0
    if stalled:
        oldest = probe.oldest_message(redis_target, pending)
        if oldest is not None:
            finding.attach("oldest waiting message", oldest)
    finding.expect(
        stored, f"> 0 in the last {window:g} s while messages wait", ok=not stalled,
        unit=Unit.COUNT,
        # The label names both targets; the message says which is which.
        problem=f"{waiting} messages wait in redis {redis_target.name}'s {pending} but 0 were "
        f"stored in the last {window:g} s",
    )  # fmt: skip


@check("QUEUE-008", Severity.HIGH, remediation=queue.requeue_stuck_in_flight)
def test_no_message_is_stuck_in_flight(
    redis_target: RedisTarget, thresholds: Thresholds, finding: Finding
) -> None:
    """No message is held in a consumer's in-flight list past the allowed age.

    Risk: a consumer died holding a message, and only a consumer of the same name, starting
    again, would hand it back (a compose replica's list is named after a container that is
    gone for good); that user is never answered, and the message is in neither message_queue
    nor the dead-letter queue, so no other check sees it. A message's age is counted from its
    enqueued_at, the only time it carries; one held past the limit is looked at twice, so a
    consumer taking a message that waited long in the queue is not counted.
    """
    queues, limit = redis_target.spec.queues, thresholds.in_flight_age_s
    held = probe.in_flight(redis_target, queues, limit, thresholds.drain_sample_s)
    stuck = held.stuck
    if stuck:
        finding.attach("stuck in flight", stuck)
    where = ", ".join(sorted({m.in_flight for m in stuck}))
    finding.expect(
        len(stuck), f"0 held in flight longer than {limit:g} s", ok=not stuck, unit=Unit.COUNT,
        problem=f"{len(stuck)} message{'' if len(stuck) == 1 else 's'} held in flight longer "
        f"than {limit:g} s, the oldest for "
        f"{held.oldest_age_s or 0:.0f} s, in {where}",
    )  # fmt: skip
