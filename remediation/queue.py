"""Queue overflow: the runbook's process-dlq, a consumer restart, more consumers for a backlog,
and dead letters trimmed when Redis runs short of memory.

The failing checks' target is the Redis queue; the service that takes its messages is the
inventory's consumer (`services: NAME: {role: consumer}`, the one that depends on the queue's
service): the reference stack's `worker`, the runbook's `backend`.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from opsbook.probes import postgres as postgres_probe
from opsbook.probes import queue as probe
from opsbook.remediate.context import Context, NoRuntime
from opsbook.remediate.plan import Plan, StepKind
from opsbook.remediation.services import runtime_of
from opsbook.targets import PostgresTarget, RedisTarget
from opsbook.waiting import until

if TYPE_CHECKING:
    from redis import Redis

SCALE_UP_TO = 3
# How long a fix waits to see what came of it (a requeued letter taken, the queue draining):
# the re-run of the check must see the outcome, not the moment before it.
SETTLE_S = 10.0
# Once the letters are taken, the consumer is done with them when nothing more comes back to
# the dead-letter queue and no further id is stored for this long.
QUIET_S = 1.0
RESTART_DRAIN_S = 20.0
DRAIN_WAIT_S = 60.0
POLL_S = 0.1


def _quiet_for(snapshot: Callable[[], object], quiet_s: float, deadline_s: float) -> bool:
    """Whether what `snapshot` shows stops changing for `quiet_s`, within `deadline_s`."""
    end = time.monotonic() + deadline_s
    last, since = snapshot(), time.monotonic()
    while time.monotonic() - since < quiet_s:
        if time.monotonic() >= end:
            return False
        time.sleep(POLL_S)
        now = snapshot()
        if now != last:
            last, since = now, time.monotonic()
    return True


def reprocess_dead_letters(ctx: Context, *, apply: bool) -> Plan:
    """Move every dead letter back onto message_queue (the runbook's process-dlq).

    Changes: each message in dead_letter_queue is moved, oldest first, to the back of
    message_queue with one atomic LMOVE, so an interruption loses or doubles none (and the
    worker's insert ignores an id it has stored before). As many moves as letters were there
    when it began: letters that fail again return to dead_letter_queue and are not looped.
    Then it waits up to 10 s for a consumer to take them (until none comes back and no id is
    stored for 1 s: whatever the consumer's own lists are called) and says how many came back.
    Privileges: the Redis admin credentials of the inventory (LMOVE, LRANGE, LLEN).
    Undo: not needed and not possible per message: a letter that can be stored is stored (the
    same as if it had never failed); one that cannot goes back to dead_letter_queue.
    """
    plan = Plan.for_fix(ctx)
    queues = ctx.redis_spec().queues
    dead, pending = queues.dead_letter, queues.pending
    checker = _checker(ctx)
    try:
        letters = probe.depth(checker, dead)
    finally:
        checker.close()
    if letters == 0:
        return plan.nothing(f"{dead} is empty")
    client = ctx.redis_admin()
    try:

        def requeue() -> str:
            # Counted again now: the plan was made a moment ago.
            moved = []
            for _ in range(int(client.llen(dead))):
                raw = client.lmove(dead, pending, "RIGHT", "LEFT")
                if raw is None:
                    break
                moved.append(str(raw))
            if not moved:
                return f"moved 0: {dead} was empty by then"
            last = moved[-1]  # the consumer takes from the right: the last moved is taken last

            def back() -> int:
                return (Counter(client.lrange(dead, 0, -1)) & Counter(moved)).total()

            def progress() -> tuple[int, int, object]:
                # What the consumer does with the letters, seen from outside whatever its own
                # in-flight lists are called: letters coming back, ids stored.
                return (
                    back(),
                    int(client.llen(queues.processed)),
                    client.lindex(queues.processed, 0),
                )

            taken = until(lambda: client.lpos(pending, last) is None, SETTLE_S, POLL_S)
            if not taken or not _quiet_for(progress, QUIET_S, SETTLE_S):
                waiting = int(client.llen(pending))
                return (
                    f"moved {len(moved)}; not all taken by a consumer within {SETTLE_S:g} s "
                    f"({waiting} wait in {pending}: does a consumer run?)"
                )
            came_back = back()
            return f"moved {len(moved)}; {came_back} came back to {dead}"

        plan.add(
            f"move the {letters} dead letters back to {pending}, one atomic LMOVE each",
            f"LMOVE {dead} {pending} RIGHT LEFT  (x {letters}, as the Redis admin)",
            StepKind.REQUEUE,
            requeue,
        )
        return plan.finish(apply, ctx.gate)
    finally:
        client.close()


def requeue_stuck_in_flight(ctx: Context, *, apply: bool) -> Plan:
    """Move the messages held in flight past thresholds.in_flight_age_s back to message_queue.

    Changes: each message QUEUE-008 finds stuck (held in a consumer's in-flight list,
    `queues.in_flight` or `IN_FLIGHT:NAME`, longer than the limit by its enqueued_at, at two
    looks drain_sample_s apart) is moved to the consuming (right) end of message_queue, oldest
    first, one atomic transaction each (WATCH the list, then MULTI: LREM list 1 MESSAGE,
    RPUSH message_queue MESSAGE, EXEC), so an interruption loses or doubles none; a message
    its consumer finished in the meantime is left alone (the transaction is dropped). Only
    messages past the limit move: whether their consumer is dead cannot be told from Redis,
    and a live one holds a message for milliseconds, so one held past the limit is stuck
    either way. Then it waits up to 10 s for a consumer to take them.
    A message delivered twice (its consumer wakes up and finishes it after the move) is
    stored once: the reference worker (chatapp/worker.py, Worker.store) inserts with
    `ON CONFLICT (id) DO NOTHING` on the id the backend gave the message (chatapp/backend.py,
    uuid4 at POST /api/messages). Its id is then pushed onto processed_messages twice, and a
    message that can never be stored reaches dead_letter_queue twice; nothing else doubles.
    Privileges: the Redis admin credentials of the inventory (WATCH, LRANGE, LREM, RPUSH).
    Undo: not needed: the message is where the backend put it, before a consumer took it; it
    is stored (or dead-lettered) as if its consumer had not died.
    """
    plan = Plan.for_fix(ctx)
    queues, limit = ctx.redis_spec().queues, ctx.thresholds.in_flight_age_s
    pending = queues.pending
    checker = _checker(ctx)
    try:
        held = probe.in_flight(checker, queues, limit, ctx.thresholds.drain_sample_s)
    finally:
        checker.close()
    if not held.stuck:
        return plan.nothing(f"no message is held in flight longer than {limit:g} s")
    stuck = list(reversed(held.stuck))  # newest first: the oldest ends at the consuming end
    lists = sorted({m.in_flight for m in stuck})
    client = ctx.redis_admin()
    try:

        def requeue() -> str:
            moved: list[str] = []
            gone = 0
            for message in stuck:
                raw = _move_held(client, message, pending)
                if raw is None:
                    gone += 1
                else:
                    moved.append(raw)
            done = f"moved {len(moved)}" + (
                f"; {gone} no longer held (finished by their consumer)" if gone else ""
            )
            if not moved:
                return done
            newest = moved[0]  # moved first, so furthest from the consuming end: taken last
            if not until(lambda: client.lpos(pending, newest) is None, SETTLE_S, POLL_S):
                waiting = sum(1 for raw in moved if client.lpos(pending, raw) is not None)
                return (
                    f"{done}; {waiting} still wait in {pending} after {SETTLE_S:g} s "
                    "(does a consumer run? QUEUE-006 restarts it)"
                )
            return f"{done}; taken by a consumer"

        ids = ", ".join(str(m.id) for m in held.stuck[:SHOWN_IDS]) + (
            f" and {len(stuck) - SHOWN_IDS} more" if len(stuck) > SHOWN_IDS else ""
        )
        plan.add(
            f"move the {len(stuck)} message{'' if len(stuck) == 1 else 's'} held in flight "
            f"longer than {limit:g} s "
            f"(the oldest for {held.oldest_age_s or 0:.0f} s) from {', '.join(lists)} back to "
            f"{pending}: ids {ids}",
            f"WATCH LIST; MULTI; LREM LIST 1 MESSAGE; RPUSH {pending} MESSAGE; EXEC  "
            f"(x {len(stuck)}, as the Redis admin)",
            StepKind.REQUEUE,
            requeue,
        )
        return plan.finish(apply, ctx.gate)
    finally:
        client.close()


# The ids a plan names (reports show ids, ages and sizes of messages, never their content).
SHOWN_IDS = 10
# Another client changing an in-flight list between WATCH and EXEC (its consumer taking the
# next message) drops the transaction; it is tried again this many times.
MOVE_ATTEMPTS = 5


def _move_held(client: Redis, message: probe.HeldMessage, pending: str) -> str | None:
    """Move one held message (found by its id in its in-flight list) to the right end of
    `pending`, atomically; its raw text, or None when it is no longer held."""
    import redis

    name = message.in_flight
    for _ in range(MOVE_ATTEMPTS):
        with client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(name)  # type: ignore[no-untyped-call]  # redis-py's stubs lack it
                now = time.time()
                raw = next(
                    (
                        str(raw)
                        for raw in pipe.lrange(name, -probe.IN_FLIGHT_READ, -1)
                        if probe.QueuedMessage.of(str(raw), now).id == message.id
                    ),
                    None,
                )
                if raw is None:
                    return None
                pipe.multi()
                pipe.lrem(name, 1, raw)
                pipe.rpush(pending, raw)
                pipe.execute()
                return raw
            except redis.WatchError:
                continue
    raise RuntimeError(
        f"{name} changed under each of {MOVE_ATTEMPTS} attempts to move message {message.id}"
    )


def _checker(ctx: Context) -> RedisTarget:
    """The queue as the checker reads it (read-only credentials)."""
    return RedisTarget(ctx.target, ctx.redis_spec(), ctx.thresholds.timeout_s)


def _queue_of(ctx: Context) -> RedisTarget:
    """The queue of a check about it: the failing Redis target, or, for a check of the
    pipeline (QUEUE-007: a PostgreSQL target with the queue), the inventory's one queue."""
    if ctx.target_kind == "redis" or len(ctx.inventory.redis) != 1:
        return _checker(ctx)
    ((name, spec),) = ctx.inventory.redis.items()
    return RedisTarget(name, spec, ctx.thresholds.timeout_s)


def _consumer_of(ctx: Context, queue: str) -> str:
    """The service that consumes `queue` (a Redis target): of the inventory's services with
    role `consumer`, the one that depends on the queue's service (or the only one)."""
    queue_service = ctx.inventory.service_of(queue)
    consumers = ctx.inventory.with_role("consumer")
    feeding = [name for name in consumers if queue_service in ctx.inventory.dependencies(name)]
    found = feeding or list(consumers)
    if len(found) != 1:
        raise NoRuntime(
            f"the inventory names {len(found)} consumer(s) of {queue_service}"
            f"{': ' + ', '.join(found) if found else ''}; the queue fixes need exactly one "
            "(services: NAME: {role: consumer, depends_on: [" + queue_service + "]})"
        )
    return found[0]


def consumer(ctx: Context) -> str:
    """The service that consumes the failing queue (see _consumer_of)."""
    return _consumer_of(ctx, ctx.target)


def restart_consumer(ctx: Context, *, apply: bool) -> Plan:
    """Restart the queue's consumer when messages wait and none is processed.

    Changes: restarts the consumer service the inventory names (role `consumer`) through the
    inventory's runtime; the reference worker hands back on start what it held in flight, so
    no message is lost (one may be stored twice over, which the insert ignores). Then waits up
    to 20 s for the queue to drain. Nothing is done when the queue is empty or draining.
    Privileges: read access to the queue (the checker's credentials); control of the runtime.
    Undo: nothing to undo; the consumer runs the same configuration as before.
    """
    plan = Plan.for_fix(ctx)
    target = _queue_of(ctx)
    queues, sample_s = target.spec.queues, ctx.thresholds.drain_sample_s
    try:
        # QUEUE-006's own measure (the cause of QUEUE-005's and QUEUE-007's failures as well),
        # so that the fix acts exactly when nothing moves.
        drain = probe.drain(target, queues, sample_s)
        waiting = drain.waiting
        if waiting == 0:
            return plan.nothing(f"{queues.pending} is empty")
        if not drain.stalled:
            return plan.nothing(
                f"{queues.pending} is draining: {drain.processed} processed in {sample_s:g} s"
            )
        service = _consumer_of(ctx, target.name)
        runtime = runtime_of(ctx, service)

        def restart() -> str:
            runtime.restart(service)
            last: list[probe.Drain] = []

            def drains() -> bool:
                last[:] = [probe.drain(target, queues, sample_s)]
                return not last[0].stalled

            if until(drains, RESTART_DRAIN_S, POLL_S):
                return "draining" if last[0].waiting else f"{queues.pending} is empty"
            return f"still not draining after {RESTART_DRAIN_S:g} s ({last[0].waiting} wait)"

        plan.add(
            f"restart {service}: {waiting} messages wait in {queues.pending}, "
            f"0 processed in {sample_s:g} s",
            runtime.command("restart", service),
            StepKind.RESTART,
            restart,
            service=service,
        )
        return plan.finish(apply, ctx.gate)
    finally:
        target.close()


def scale_workers(ctx: Context, *, apply: bool) -> Plan:
    """Run 3 workers while message_queue holds more than the allowed backlog, then 1 again.

    Changes: with a backlog over `thresholds.queue_backlog` and fewer than 3 workers, scales
    the consumer service (role `consumer`) to 3 (starting it if it was stopped), waits up to
    60 s for message_queue to empty and scales back to 1. If the queue is not empty by then, 3
    workers are left running and the result says so: applied again once the queue is empty (with
    `python -m opsbook remediate RUN --check QUEUE-003 --apply`, or directly), this
    remediation plans only the scale-down. An extra worker stops after the message in hand and
    hands back what it held in flight, so no message is lost or doubled.
    Privileges: read access to the queue (the checker's credentials); control of the runtime.
    Undo: scale by hand (`python -m opsbook sandbox scale worker N`, or the compose project's
    `--scale worker=N`).
    """
    plan = Plan.for_fix(ctx)
    pending, limit = ctx.redis_spec().queues.pending, ctx.thresholds.queue_backlog
    target = _checker(ctx)
    try:
        depth = probe.depth(target, pending)
        service = consumer(ctx)
        runtime = runtime_of(ctx, service)
        running = runtime.replicas(service)

        def scale_down() -> str:
            runtime.scale(service, 1)
            return f"{runtime.replicas(service)} {service} runs"

        if depth <= limit:
            if running > 1 and depth == 0:
                plan.add(
                    f"scale {service} from {running} back to 1: {pending} is empty",
                    runtime.command("scale", service, "1"),
                    StepKind.SCALE,
                    scale_down,
                    service=service,
                )
                return plan.finish(apply, ctx.gate)
            if running > 1:
                return plan.nothing(
                    f"{running} workers drain {pending} ({depth} wait, max {limit}); "
                    "they go back to 1 once it is empty"
                )
            return plan.nothing(f"{pending} holds {depth} (max {limit})")
        if running >= SCALE_UP_TO:
            return plan.nothing(
                f"{running} workers already run for the {depth} waiting in {pending} "
                f"(max {limit}); if it does not drain, see QUEUE-006"
            )

        def scale_up() -> str:
            runtime.scale(service, SCALE_UP_TO)
            return f"{runtime.replicas(service)} workers run"

        def scale_down_once_drained() -> str:
            if not until(lambda: probe.depth(target, pending) == 0, DRAIN_WAIT_S, POLL_S):
                return (
                    f"{probe.depth(target, pending)} still wait after {DRAIN_WAIT_S:g} s: "
                    f"{runtime.replicas(service)} workers left running; apply again once "
                    f"{pending} is empty to scale back to 1"
                )
            return scale_down()

        plan.add(
            f"scale {service} from {running} to {SCALE_UP_TO}: {pending} holds {depth} "
            f"(max {limit})",
            runtime.command("scale", service, str(SCALE_UP_TO)),
            StepKind.SCALE,
            scale_up,
            service=service,
        )
        plan.add(
            f"scale {service} back to 1 once {pending} is empty (waits up to {DRAIN_WAIT_S:g} s)",
            runtime.command("scale", service, "1"),
            StepKind.SCALE,
            scale_down_once_drained,
            service=service,
        )
        return plan.finish(apply, ctx.gate)
    finally:
        target.close()


# processed_messages is read from its oldest end in chunks of this many ids, up to this many.
HISTORY_CHUNK = 1000
HISTORY_MOST = 100_000
DAY_S = 86400


def _history_past_retention(ctx: Context, client: Redis, processed: str) -> int:
    """How many ids at the oldest end of `processed` belong to messages stored longer than
    remediation.retention_days ago (counted from that end, stopping at the first that does
    not: an id whose message is newer, or not stored at all, is kept with all after it)."""
    if len(ctx.inventory.postgres) != 1:
        return 0  # which database holds the messages is not known
    ((name, spec),) = ctx.inventory.postgres.items()
    database = PostgresTarget(name, spec, ctx.thresholds.timeout_s)
    older_than_s = ctx.inventory.remediation.retention_days * DAY_S
    count = 0
    try:
        while count < HISTORY_MOST:
            end = -count - 1
            chunk = [str(i) for i in client.lrange(processed, end - HISTORY_CHUNK + 1, end)]
            old = postgres_probe.stored_before(database, chunk, older_than_s)
            for message_id in reversed(chunk):  # from the oldest end
                if message_id not in old:
                    return count
                count += 1
            if len(chunk) < HISTORY_CHUNK:
                return count
        return count
    finally:
        database.close()


def trim_queue_memory(ctx: Context, *, apply: bool) -> Plan:
    """Free Redis memory by trimming what opsbook may drop: dead letters beyond the allowed
    count (archived first) and processed history past retention; never pending messages.

    Changes: only while Redis uses more than thresholds.redis_memory_percent of its maxmemory
    (QUEUE-002's own measure). The oldest dead letters beyond thresholds.dead_letter_max are
    written, one JSON line each, to dead-letters-TARGET-TIME.jsonl in backup.dir (fsynced), and
    only then removed with LTRIM (the newest dead_letter_max stay, for diagnosis). The oldest
    ids of processed_messages whose messages PostgreSQL has stored for longer than
    remediation.retention_days are removed with LTRIM (they are in the database). New entries
    arrive at the other end of both lists and stay. message_queue and the consumers' in-flight
    lists are not touched. Then it says how much memory Redis uses.
    Privileges: the Redis admin credentials (LRANGE, LTRIM); read access to the messages table
    (the checker's credentials); write access to backup.dir.
    Undo: push the archived letters back (`LPUSH dead_letter_queue LINE` for each line of the
    archive, oldest first); the trimmed ids of processed_messages are only a history of what
    PostgreSQL holds, and are not brought back.
    """
    plan = Plan.for_fix(ctx)
    queues, keep = ctx.redis_spec().queues, ctx.thresholds.dead_letter_max
    dead, processed = queues.dead_letter, queues.processed
    allowed = ctx.thresholds.redis_memory_percent
    checker = _checker(ctx)
    try:
        used = probe.memory(checker)
        letters = probe.depth(checker, dead)
    finally:
        checker.close()
    if used.used_percent is None:
        raise ValueError(
            "maxmemory is not set: trimming cannot bring Redis under a limit it does not have; "
            "set one (CONFIG SET maxmemory, and in redis.conf)"
        )
    if used.used_percent < allowed:
        return plan.nothing(
            f"Redis uses {used.used_percent:.0f} % of maxmemory (max {allowed:g} %)"
        )
    why = f"Redis uses {used.used_percent:.0f} % of maxmemory (max {allowed:g} %)"
    client = ctx.redis_admin()
    try:

        def memory_now() -> str:
            after = probe.RedisMemory.from_info(client.info("memory"))
            now = f"{after.used_percent:.0f} %" if after.used_percent is not None else "?"
            return f"Redis uses {now} of maxmemory now"

        drop = letters - keep
        settings = ctx.inventory.backup
        if drop > 0 and settings is not None:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            archive = settings.dir / f"dead-letters-{ctx.target}-{stamp}.jsonl"

            def trim_dead() -> str:
                # The oldest are at the right end; new dead letters arrive at the left, so
                # trimming from the right removes exactly what was archived.
                oldest = [str(raw) for raw in client.lrange(dead, -drop, -1)]
                settings.dir.mkdir(parents=True, exist_ok=True)
                with archive.open("x", encoding="utf-8") as stream:
                    for raw in reversed(oldest):  # oldest first
                        stream.write(json.dumps(raw) + "\n")
                    stream.flush()
                    os.fsync(stream.fileno())
                client.ltrim(dead, 0, -len(oldest) - 1)
                return f"archived and trimmed {len(oldest)}; {memory_now()}"

            plan.add(
                f"archive the {drop} oldest of the {letters} dead letters to {archive} and trim "
                f"them from {dead} (keeps the newest {keep}): {why}",
                f"LRANGE {dead} -{drop} -1 > {archive} && LTRIM {dead} 0 -{drop + 1}"
                "  (as the Redis admin)",
                StepKind.TRIM,
                trim_dead,
            )
        old = _history_past_retention(ctx, client, processed)
        if old:
            days = ctx.inventory.remediation.retention_days

            def trim_history() -> str:
                client.ltrim(processed, 0, -old - 1)
                return f"trimmed {old}; {memory_now()}"

            plan.add(
                f"trim the {old} oldest ids of {processed}, of messages stored more than "
                f"{days} days ago: {why}",
                f"LTRIM {processed} 0 -{old + 1}  (as the Redis admin)",
                StepKind.TRIM,
                trim_history,
                only_if=(
                    f"if Redis still uses {allowed:g} % of maxmemory or more",
                    lambda: (
                        (probe.RedisMemory.from_info(client.info("memory")).used_percent or 0)
                        >= allowed
                    ),
                ),
            )
        if not plan.steps:
            raise LookupError(
                f"{why}, but opsbook may trim nothing: {dead} holds {letters} (it keeps {keep})"
                + ("" if settings else ", and there is no backup: section to archive them in")
                + f"; no id of {processed} is past {ctx.inventory.remediation.retention_days} "
                "days; see what else Redis holds (redis-cli --bigkeys); pending messages are "
                "never trimmed"
            )
        return plan.finish(apply, ctx.gate)
    finally:
        client.close()
