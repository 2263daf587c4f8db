"""Queue overflow: the runbook's process-dlq, a worker restart, and more workers for a backlog.

The worker's service is `worker` in every runtime; the failing checks' target is the Redis
queue, so these fixes name the service themselves.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from opsbook.probes import queue as probe
from opsbook.remediate.context import Context
from opsbook.remediate.plan import Plan, StepKind
from opsbook.targets import RedisTarget

if TYPE_CHECKING:
    from redis import Redis

    from opsbook.inventory import Queues

WORKER = "worker"
SCALE_UP_TO = 3
# How long a fix waits to see what came of it (a requeued letter taken, the queue draining):
# the re-run of the check must see the outcome, not the moment before it.
SETTLE_S = 10.0
RESTART_DRAIN_S = 20.0
DRAIN_WAIT_S = 60.0
POLL_S = 0.1


def _until(condition: Callable[[], bool], deadline_s: float) -> bool:
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() >= end:
            return False
        time.sleep(POLL_S)
    return True


def _in_flight_lists(client: Redis, queues: Queues) -> list[str]:
    # The reference worker's convention: PENDING:processing, and PENDING:processing:NAME for
    # each further worker.
    prefix = f"{queues.pending}:processing"
    return [prefix, *client.scan_iter(match=f"{prefix}:*", count=100)]


def reprocess_dead_letters(ctx: Context, *, apply: bool) -> Plan:
    """Move every dead letter back onto message_queue (the runbook's process-dlq).

    Changes: each message in dead_letter_queue is moved, oldest first, to the back of
    message_queue with one atomic LMOVE, so an interruption loses or doubles none (and the
    worker's insert ignores an id it has stored before). As many moves as letters were there
    when it began: letters that fail again return to dead_letter_queue and are not looped.
    Then it waits up to 10 s for the worker to take them and says how many came back.
    Privileges: the Redis admin credentials of the inventory (LMOVE on both lists, SCAN).
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
            last = moved[-1]  # the worker takes from the right: the last moved is taken last

            def taken() -> bool:
                return all(
                    client.lpos(key, last) is None
                    for key in [pending, *_in_flight_lists(client, queues)]
                )

            if not _until(taken, SETTLE_S):
                waiting = int(client.llen(pending))
                return (
                    f"moved {len(moved)}; not all taken by a worker within {SETTLE_S:g} s "
                    f"({waiting} wait in {pending}: is a worker running?)"
                )
            back = Counter(client.lrange(dead, 0, -1)) & Counter(moved)
            return f"moved {len(moved)}; {back.total()} came back to {dead}"

        plan.add(
            f"move the {letters} dead letters back to {pending}, one atomic LMOVE each",
            f"LMOVE {dead} {pending} RIGHT LEFT  (x {letters}, as the Redis admin)",
            StepKind.REQUEUE,
            requeue,
        )
        return plan.finish(apply, ctx.gate)
    finally:
        client.close()


def _checker(ctx: Context) -> RedisTarget:
    """The queue as the checker reads it (read-only credentials)."""
    return RedisTarget(ctx.target, ctx.redis_spec(), ctx.thresholds.timeout_s)


def restart_worker(ctx: Context, *, apply: bool) -> Plan:
    """Restart the queue worker when messages wait and none is processed.

    Changes: restarts the `worker` service through the inventory's runtime; on start it hands
    back what it held in flight, so no message is lost (one may be stored twice over, which the
    insert ignores). Then waits up to 20 s for the queue to drain. Nothing is done when the
    queue is empty or draining.
    Privileges: read access to the queue (the checker's credentials); control of the runtime.
    Undo: nothing to undo; the worker runs the same configuration as before.
    """
    plan = Plan.for_fix(ctx)
    queues, sample_s = ctx.redis_spec().queues, ctx.thresholds.drain_sample_s
    target = _checker(ctx)
    try:
        # QUEUE-006's own measure, so that the fix acts exactly when the check fails.
        drain = probe.drain(target, queues, sample_s)
        waiting = drain.waiting
        if waiting == 0:
            return plan.nothing(f"{queues.pending} is empty")
        if not drain.stalled:
            return plan.nothing(
                f"{queues.pending} is draining: {drain.processed} processed in {sample_s:g} s"
            )
        runtime = ctx.runtime()

        def restart() -> str:
            runtime.restart(WORKER)
            last: list[probe.Drain] = []

            def drains() -> bool:
                last[:] = [probe.drain(target, queues, sample_s)]
                return not last[0].stalled

            if _until(drains, RESTART_DRAIN_S):
                return "draining" if last[0].waiting else f"{queues.pending} is empty"
            return f"still not draining after {RESTART_DRAIN_S:g} s ({last[0].waiting} wait)"

        plan.add(
            f"restart {WORKER}: {waiting} messages wait in {queues.pending}, "
            f"0 processed in {sample_s:g} s",
            runtime.command("restart", WORKER),
            StepKind.RESTART,
            restart,
        )
        return plan.finish(apply, ctx.gate)
    finally:
        target.close()


def scale_workers(ctx: Context, *, apply: bool) -> Plan:
    """Run 3 workers while message_queue holds more than the allowed backlog, then 1 again.

    Changes: with a backlog over `thresholds.queue_backlog` and fewer than 3 workers, scales
    the `worker` service to 3 (starting it if it was stopped), waits up to 60 s for
    message_queue to empty and scales back to 1. If the queue is not empty by then, 3 workers
    are left running and the result says so: applied again once the queue is empty (with
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
        runtime = ctx.runtime()
        running = runtime.replicas(WORKER)

        def scale_down() -> str:
            runtime.scale(WORKER, 1)
            return f"{runtime.replicas(WORKER)} {WORKER} runs"

        if depth <= limit:
            if running > 1 and depth == 0:
                plan.add(
                    f"scale {WORKER} from {running} back to 1: {pending} is empty",
                    runtime.command("scale", WORKER, "1"),
                    StepKind.SCALE,
                    scale_down,
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
            runtime.scale(WORKER, SCALE_UP_TO)
            return f"{runtime.replicas(WORKER)} workers run"

        def scale_down_once_drained() -> str:
            if not _until(lambda: probe.depth(target, pending) == 0, DRAIN_WAIT_S):
                return (
                    f"{probe.depth(target, pending)} still wait after {DRAIN_WAIT_S:g} s: "
                    f"{runtime.replicas(WORKER)} workers left running; apply again once "
                    f"{pending} is empty to scale back to 1"
                )
            return scale_down()

        plan.add(
            f"scale {WORKER} from {running} to {SCALE_UP_TO}: {pending} holds {depth} "
            f"(max {limit})",
            runtime.command("scale", WORKER, str(SCALE_UP_TO)),
            StepKind.SCALE,
            scale_up,
        )
        plan.add(
            f"scale {WORKER} back to 1 once {pending} is empty (waits up to {DRAIN_WAIT_S:g} s)",
            runtime.command("scale", WORKER, "1"),
            StepKind.SCALE,
            scale_down_once_drained,
        )
        return plan.finish(apply, ctx.gate)
    finally:
        target.close()
