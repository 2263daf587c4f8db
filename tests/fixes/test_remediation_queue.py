"""The queue remediations, each applied to a really broken queue and proven by its check.

The worker is really stopped, messages are really pushed (as Redis's admin `default` user) and
really stored by the reference worker; workers are really scaled. Every test accounts for each
message it pushed: where it is before and after (message_queue, the in-flight lists,
dead_letter_queue, processed_messages and the messages table), so that a fix that loses or
doubles a message fails. Tests that make the worker log an ERROR (poison messages) run on a
fresh sandbox of their own: the log check of later runs on the shared one would report it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import pytest
import redis
import requests
from support import CheckRun, RunChecks, eventually

from opsbook.inventory import load_inventory
from opsbook.remediate.context import Context
from opsbook.remediate.plan import Plan
from opsbook.remediation import queue
from opsbook.sandbox.postgres import Postgres
from opsbook.sandbox.stack import Stack

pytestmark = pytest.mark.sandbox

PENDING = "message_queue"
PROCESSING = "message_queue:processing"
DEAD_LETTER = "dead_letter_queue"
PROCESSED = "processed_messages"
TIMEOUT_S = 3.0


def admin_client(stack: Stack) -> redis.Redis:
    password = (stack.dir / "secrets" / "redis-default.password").read_text().strip()
    return redis.Redis(
        port=stack.state.ports["redis"], password=password, socket_timeout=TIMEOUT_S,
        decode_responses=True,
    )  # fmt: skip


def start_conversation(stack: Stack, client: redis.Redis) -> str:
    """A conversation the database knows, made through the backend as a user would."""
    answer = requests.post(
        f"http://127.0.0.1:{stack.state.ports['backend']}/api/messages",
        json={"content": "hello", "user_id": "opsbook-test"},
        timeout=TIMEOUT_S,
    )
    assert answer.status_code == 202, answer.text
    stored = answer.json()
    eventually(
        lambda: stored["id"] in client.lrange(PROCESSED, 0, 99),
        "the worker stored the conversation's first message",
    )
    return str(stored["conversation_id"])


@dataclass
class Batch:
    """The messages a test pushed: valid ones (by id) and poison ones (raw), all tagged."""

    tag: str
    valid: dict[str, str]  # id -> raw
    poison: list[str]

    @classmethod
    def make(cls, conversation_id: str, valid: int, poison: int = 0) -> Batch:
        tag = f"opsbook-remediation-{uuid.uuid4()}"
        messages = {}
        for _ in range(valid):
            message_id = str(uuid.uuid4())
            messages[message_id] = json.dumps(
                {
                    "id": message_id, "conversation_id": conversation_id,
                    "user_id": "opsbook-test", "role": "user", "content": tag,
                    "enqueued_at": time.time(),
                }
            )  # fmt: skip
        return cls(tag, messages, [f"poison {i} {tag}" for i in range(poison)])  # not JSON

    @property
    def raw(self) -> list[str]:
        return [*self.valid.values(), *self.poison]

    def push(self, client: redis.Redis, key: str) -> None:
        pipe = client.pipeline(transaction=False)
        for payload in self.raw:
            pipe.lpush(key, payload)
        pipe.execute()


def account(stack: Stack, client: redis.Redis, batch: Batch) -> dict[str, int]:
    """Where each message of the batch is now; raises if one is anywhere twice."""
    mine = set(batch.raw)
    in_flight = [PROCESSING, *client.scan_iter(match=f"{PROCESSING}:*")]
    places = {
        "message_queue": client.lrange(PENDING, 0, -1),
        "in_flight": [raw for key in in_flight for raw in client.lrange(key, 0, -1)],
        "dead_letter_queue": client.lrange(DEAD_LETTER, 0, -1),
    }
    counts = {name: Counter(raw for raw in found if raw in mine) for name, found in places.items()}
    postgres = stack.component("postgres")
    assert isinstance(postgres, Postgres)
    stored = postgres.psql(
        f"SELECT id FROM messages WHERE content = '{batch.tag}'", database="chatdb"
    ).split()
    processed = Counter(i for i in client.lrange(PROCESSED, 0, -1) if i in batch.valid)
    doubled = {
        **{f"{name}: {raw[:60]}": n for name, c in counts.items() for raw, n in c.items() if n > 1},
        **{f"stored: {i}": n for i, n in Counter(stored).items() if n > 1},
        **{f"processed: {i}": n for i, n in processed.items() if n > 1},
    }
    assert not doubled, f"messages found twice: {doubled}"
    assert set(stored) <= set(batch.valid), "stored rows that the test did not push"
    total = {name: c.total() for name, c in counts.items()}
    return {**total, "stored": len(stored), "processed": processed.total()}


def settled(stack: Stack, client: redis.Redis, batch: Batch) -> dict[str, int]:
    """The account once every valid message is stored (or the deadline passed)."""
    eventually(
        lambda: account(stack, client, batch)["stored"] == len(batch.valid),
        f"all {len(batch.valid)} valid messages stored",
    )
    return account(stack, client, batch)


def context(stack: Stack, check_id: str) -> Context:
    return Context(load_inventory(stack.inventory_path, environ={}), check_id, "redis", "queue")


def planned(run: CheckRun, check_id: str) -> dict[str, object]:
    row = run.row(check_id, "queue")
    assert row["outcome"] == "failed", run.output
    attempt = row["remediation_attempt"]
    assert attempt["status"] == "planned", attempt
    assert attempt["verdict"] is None
    return dict(attempt)


def fixed(run: CheckRun, check_id: str) -> dict[str, object]:
    row = run.row(check_id, "queue")
    assert row["outcome"] == "fixed", run.output
    assert run.exit_code == 0, run.output
    attempt = row["remediation_attempt"]
    assert attempt["status"] == "applied", attempt
    assert attempt["verdict"] == "FIXED", attempt
    assert attempt["after"] == "passed"
    assert attempt["before"] == row["message"]
    return dict(attempt)


def nothing_to_do(plan: Plan) -> str:
    assert plan.nothing_to_do is not None, plan.lines()
    assert not plan.applied
    return plan.nothing_to_do


@pytest.mark.breaks("QUEUE-004")
@pytest.mark.fixes("QUEUE-004")
def test_dead_letters_are_stored_after_reprocessing_queue_004(
    sandbox: Stack, admin_redis: redis.Redis, run_checks: RunChecks
) -> None:
    conversation = start_conversation(sandbox, admin_redis)
    admin_redis.delete(DEAD_LETTER)
    # Dead letters that would be stored now (their conversation exists): 15, over the 10 allowed.
    batch = Batch.make(conversation, valid=15)
    try:
        batch.push(admin_redis, DEAD_LETTER)
        before = account(sandbox, admin_redis, batch)
        assert before == {
            "message_queue": 0, "in_flight": 0, "dead_letter_queue": 15,
            "stored": 0, "processed": 0,
        }  # fmt: skip

        run = run_checks("--check=QUEUE-004", "--remediate=plan")
        attempt = planned(run, "QUEUE-004")
        assert attempt["plan"] == [
            "[requeue] move the 15 dead letters back to message_queue, one atomic LMOVE each: "
            "LMOVE dead_letter_queue message_queue RIGHT LEFT  (x 15, as the Redis admin)"
        ]
        assert account(sandbox, admin_redis, batch) == before  # the plan changed nothing

        run = run_checks("--check=QUEUE-004", "--remediate=apply")
        attempt = fixed(run, "QUEUE-004")
        assert attempt["plan"] == [
            "[requeue] move the 15 dead letters back to message_queue, one atomic LMOVE each: "
            "LMOVE dead_letter_queue message_queue RIGHT LEFT  (x 15, as the Redis admin) "
            "-> moved 15; 0 came back to dead_letter_queue"
        ]
        assert settled(sandbox, admin_redis, batch) == {
            "message_queue": 0, "in_flight": 0, "dead_letter_queue": 0,
            "stored": 15, "processed": 15,
        }  # fmt: skip

        again = queue.reprocess_dead_letters(context(sandbox, "QUEUE-004"), apply=True)
        assert nothing_to_do(again) == "dead_letter_queue is empty"
    finally:
        admin_redis.delete(DEAD_LETTER)
    assert run_checks("--check=QUEUE-004").exit_code == 0


@pytest.mark.breaks("QUEUE-004")
def test_poison_dead_letters_come_back_and_the_report_says_not_fixed(
    fresh_sandbox: Stack, run_checks: RunChecks
) -> None:
    client = admin_client(fresh_sandbox)
    try:
        conversation = start_conversation(fresh_sandbox, client)
        # 11 that can never be stored (over the 10 allowed) and 4 that can.
        batch = Batch.make(conversation, valid=4, poison=11)
        batch.push(client, DEAD_LETTER)
        run = run_checks(
            "--check=QUEUE-004", "--remediate=apply", inventory=fresh_sandbox.inventory_path
        )
        row = run.row("QUEUE-004", "queue")
        assert row["outcome"] == "failed", run.output
        assert run.exit_code == 1
        attempt = row["remediation_attempt"]
        assert attempt["status"] == "applied", attempt
        assert attempt["verdict"] == "NOT FIXED", attempt
        assert attempt["plan"][0].endswith("-> moved 15; 11 came back to dead_letter_queue")
        assert attempt["after"] == (
            "redis queue: dead_letter_queue holds 11 messages (expected <= 10)"
        )
        assert "NOT FIXED" in run.output
        # The poison is back where it was, once each; the rest is stored, once each.
        assert settled(fresh_sandbox, client, batch) == {
            "message_queue": 0, "in_flight": 0, "dead_letter_queue": 11,
            "stored": 4, "processed": 4,
        }  # fmt: skip
    finally:
        client.close()


@pytest.mark.breaks("QUEUE-006")
@pytest.mark.fixes("QUEUE-006")
def test_stopped_worker_is_restarted_and_drains_queue_006(
    breakable_sandbox: Stack, admin_redis: redis.Redis, run_checks: RunChecks
) -> None:
    conversation = start_conversation(breakable_sandbox, admin_redis)
    batch = Batch.make(conversation, valid=50)
    breakable_sandbox.stop("worker")
    restart = (
        f"[restart] restart worker: 50 messages wait in message_queue, 0 processed in 0.5 s: "
        f"python -m opsbook sandbox restart worker --dir {breakable_sandbox.dir}"
    )
    try:
        batch.push(admin_redis, PENDING)
        before = account(breakable_sandbox, admin_redis, batch)
        assert before["message_queue"] == 50
        assert before["stored"] == 0

        run = run_checks("--check=QUEUE-006", "--remediate=plan")
        assert planned(run, "QUEUE-006")["plan"] == [restart]
        # A restart is risky: without --allow=restart it is refused, and nothing happens.
        run = run_checks("--check=QUEUE-006", "--remediate=apply")
        attempt = run.row("QUEUE-006", "queue")["remediation_attempt"]
        assert attempt["status"] == "refused", attempt
        assert "--allow=restart" in attempt["reason"]
        assert not breakable_sandbox.component("worker").is_running()
        assert account(breakable_sandbox, admin_redis, batch) == before

        run = run_checks("--check=QUEUE-006", "--remediate=apply", "--allow=restart")
        attempt = fixed(run, "QUEUE-006")
        plan = attempt["plan"]
        assert isinstance(plan, list)
        assert plan[0] in (f"{restart} -> message_queue is empty", f"{restart} -> draining"), plan
        assert breakable_sandbox.component("worker").is_running()
        assert settled(breakable_sandbox, admin_redis, batch) == {
            "message_queue": 0, "in_flight": 0, "dead_letter_queue": 0,
            "stored": 50, "processed": 50,
        }  # fmt: skip

        again = queue.restart_consumer(context(breakable_sandbox, "QUEUE-006"), apply=True)
        assert nothing_to_do(again) == "message_queue is empty"
    finally:
        breakable_sandbox.start("worker")


@pytest.mark.breaks("QUEUE-003")
@pytest.mark.fixes("QUEUE-003")
def test_backlog_scales_workers_up_and_back_to_one_queue_003(
    breakable_sandbox: Stack, admin_redis: redis.Redis, run_checks: RunChecks
) -> None:
    conversation = start_conversation(breakable_sandbox, admin_redis)
    batch = Batch.make(conversation, valid=3000)
    runtime = context(breakable_sandbox, "QUEUE-003").runtime()
    log = breakable_sandbox.dir / "logs" / "worker.log"
    breakable_sandbox.stop("worker")
    command = f"python -m opsbook sandbox scale worker %s --dir {breakable_sandbox.dir}"
    try:
        batch.push(admin_redis, PENDING)
        before = account(breakable_sandbox, admin_redis, batch)
        assert before["message_queue"] == 3000

        run = run_checks("--check=QUEUE-003", "--remediate=plan")
        assert planned(run, "QUEUE-003")["plan"] == [
            "[scale] scale worker from 0 to 3: message_queue holds 3000 (max 1000): " + command % 3,
            "[scale] scale worker back to 1 once message_queue is empty (waits up to 60 s): "
            + command % 1,
        ]
        assert runtime.replicas("worker") == 0
        assert account(breakable_sandbox, admin_redis, batch) == before

        log_start = log.stat().st_size
        run = run_checks("--check=QUEUE-003", "--remediate=apply")
        attempt = fixed(run, "QUEUE-003")
        plan = attempt["plan"]
        assert isinstance(plan, list)
        assert plan[0].endswith(" -> 3 workers run"), plan
        assert plan[1].endswith(" -> 1 worker runs"), plan
        assert runtime.replicas("worker") == 1
        assert [s.name for s in breakable_sandbox.status() if s.name.startswith("worker")] == [
            "worker"
        ]
        with log.open(encoding="utf-8") as stream:
            stream.seek(log_start)
            lines = stream.read().splitlines()
        for name in ("worker", "worker-2", "worker-3"):
            assert any(f" {name}: stored message " in line for line in lines), name
        assert not [line for line in lines if " ERROR " in line]
        assert settled(breakable_sandbox, admin_redis, batch) == {
            "message_queue": 0, "in_flight": 0, "dead_letter_queue": 0,
            "stored": 3000, "processed": 3000,
        }  # fmt: skip

        again = queue.scale_workers(context(breakable_sandbox, "QUEUE-003"), apply=True)
        assert nothing_to_do(again) == "message_queue holds 0 (max 1000)"
    finally:
        breakable_sandbox.scale("worker", 1)


def test_extra_workers_go_back_to_one_once_the_queue_is_empty(
    breakable_sandbox: Stack, admin_redis: redis.Redis
) -> None:
    ctx = context(breakable_sandbox, "QUEUE-003")
    runtime = ctx.runtime()
    try:
        runtime.scale("worker", 3)  # left by an earlier fix whose backlog took long to drain
        assert runtime.replicas("worker") == 3
        plan = queue.scale_workers(ctx, apply=False)
        assert plan.lines() == [
            "[scale] scale worker from 3 back to 1: message_queue is empty: "
            f"python -m opsbook sandbox scale worker 1 --dir {breakable_sandbox.dir}"
        ]
        assert runtime.replicas("worker") == 3  # planning changed nothing
        plan = queue.scale_workers(ctx, apply=True)
        assert plan.applied
        assert plan.steps[0].result == "1 worker runs"
        assert runtime.replicas("worker") == 1
        again = queue.scale_workers(ctx, apply=True)
        assert nothing_to_do(again) == "message_queue holds 0 (max 1000)"
    finally:
        breakable_sandbox.scale("worker", 1)


def test_a_starting_worker_leaves_the_in_flight_messages_of_others_alone(
    breakable_sandbox: Stack, admin_redis: redis.Redis
) -> None:
    conversation = start_conversation(breakable_sandbox, admin_redis)
    held, orphaned = Batch.make(conversation, valid=1), Batch.make(conversation, valid=1)
    try:
        # As if the running first worker held this message in flight right now.
        held.push(admin_redis, PROCESSING)
        breakable_sandbox.scale("worker", 3)
        assert admin_redis.lrange(PROCESSING, 0, -1) == held.raw  # not taken by worker-2 or -3
        assert account(breakable_sandbox, admin_redis, held)["stored"] == 0

        # worker-3 dies holding a message; the scale-down that retires it hands it back.
        worker_3 = breakable_sandbox.component("worker-3")
        pid = worker_3.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        eventually(lambda: not worker_3.is_running(), "worker-3 is dead")
        orphaned.push(admin_redis, f"{PROCESSING}:worker-3")
        breakable_sandbox.scale("worker", 1)
        assert settled(breakable_sandbox, admin_redis, orphaned) == {
            "message_queue": 0, "in_flight": 0, "dead_letter_queue": 0,
            "stored": 1, "processed": 1,
        }  # fmt: skip
        assert admin_redis.exists(f"{PROCESSING}:worker-3") == 0
        assert admin_redis.lrange(PROCESSING, 0, -1) == held.raw
    finally:
        admin_redis.lrem(PROCESSING, 0, held.raw[0])
        breakable_sandbox.scale("worker", 1)


@pytest.mark.breaks("QUEUE-008")
@pytest.mark.fixes("QUEUE-008")
def test_a_message_stuck_in_a_dead_consumers_list_is_requeued_and_stored_once_queue_008(
    breakable_sandbox: Stack, admin_redis: redis.Redis, run_checks: RunChecks
) -> None:
    conversation = start_conversation(breakable_sandbox, admin_redis)
    dead = f"{PROCESSING}:worker-9"  # a consumer gone for good: nobody recovers its list
    stuck, fresh = Batch.make(conversation, valid=2), Batch.make(conversation, valid=1)
    (stuck_id, older_id) = list(stuck.valid)
    # Its two messages were enqueued 10 and 15 minutes ago; it took the older one first.
    for message_id, age_s in ((older_id, 900), (stuck_id, 600)):
        payload = json.loads(stuck.valid[message_id])
        payload["enqueued_at"] = time.time() - age_s
        stuck.valid[message_id] = json.dumps(payload)
    breakable_sandbox.stop("worker")
    try:
        admin_redis.lpush(dead, stuck.valid[older_id], stuck.valid[stuck_id])
        # What the stopped worker holds was taken a moment ago: not stuck, and not moved.
        fresh.push(admin_redis, PROCESSING)
        before = account(breakable_sandbox, admin_redis, stuck)
        assert before == {
            "message_queue": 0, "in_flight": 2, "dead_letter_queue": 0,
            "stored": 0, "processed": 0,
        }  # fmt: skip

        run = run_checks("--check=QUEUE-008", "--remediate=plan")
        (line,) = planned(run, "QUEUE-008")["plan"]
        assert re.fullmatch(
            re.escape("[requeue] move the 2 messages held in flight longer than 300 s ")
            + r"\(the oldest for 9\d\d s\) "
            + re.escape(
                f"from {dead} back to message_queue: ids {older_id}, {stuck_id}: WATCH LIST; "
                "MULTI; LREM LIST 1 MESSAGE; RPUSH message_queue MESSAGE; EXEC  "
                "(x 2, as the Redis admin)"
            ),
            line,
        ), line
        assert account(breakable_sandbox, admin_redis, stuck) == before  # the plan changed nothing

        breakable_sandbox.start("worker")  # the consumer that takes them once requeued
        # Requeueing moves no more than was there and doubles nothing: not risky, no --allow.
        run = run_checks("--check=QUEUE-008", "--remediate=apply")
        attempt = fixed(run, "QUEUE-008")
        plan = attempt["plan"]
        assert isinstance(plan, list)
        assert plan[0].endswith(" -> moved 2; taken by a consumer"), plan
        assert settled(breakable_sandbox, admin_redis, stuck) == {
            "message_queue": 0, "in_flight": 0, "dead_letter_queue": 0,
            "stored": 2, "processed": 2,
        }  # fmt: skip
        assert admin_redis.exists(dead) == 0
        # The fresh one was recovered by the worker itself on start, and stored once as well.
        assert settled(breakable_sandbox, admin_redis, fresh)["stored"] == 1

        again = queue.requeue_stuck_in_flight(context(breakable_sandbox, "QUEUE-008"), apply=True)
        assert nothing_to_do(again) == "no message is held in flight longer than 300 s"
    finally:
        admin_redis.delete(dead)
        breakable_sandbox.start("worker")
    assert run_checks("--check=QUEUE-008").exit_code == 0


def test_a_stuck_message_its_consumer_finishes_meanwhile_is_not_requeued(
    breakable_sandbox: Stack, admin_redis: redis.Redis
) -> None:
    """The move is one transaction on what is still held: a consumer that wakes up and
    finishes the message between the plan and the move keeps it, and it is not doubled."""
    conversation = start_conversation(breakable_sandbox, admin_redis)
    dead = f"{PROCESSING}:worker-9"
    batch = Batch.make(conversation, valid=1)
    (message_id,) = batch.valid
    payload = json.loads(batch.valid[message_id])
    payload["enqueued_at"] = time.time() - 900
    batch.valid[message_id] = json.dumps(payload)
    try:
        batch.push(admin_redis, dead)

        def consumer_finishes_it(step: object) -> None:
            # Run after the plan was made, just before its step acts.
            admin_redis.lrem(dead, 1, batch.raw[0])

        ctx = dataclasses.replace(
            context(breakable_sandbox, "QUEUE-008"), gate=consumer_finishes_it
        )
        plan = queue.requeue_stuck_in_flight(ctx, apply=True)
        (line,) = plan.lines()
        assert re.fullmatch(
            re.escape("[requeue] move the 1 message held in flight longer than 300 s ")
            + r"\(the oldest for 9\d\d s\) "
            + re.escape(
                f"from {dead} back to message_queue: ids {message_id}: WATCH LIST; MULTI; "
                "LREM LIST 1 MESSAGE; RPUSH message_queue MESSAGE; EXEC  "
                "(x 1, as the Redis admin) -> moved 0; 1 no longer held (finished by their "
                "consumer)"
            ),
            line,
        ), line
        assert account(breakable_sandbox, admin_redis, batch)["message_queue"] == 0
    finally:
        admin_redis.delete(dead)
