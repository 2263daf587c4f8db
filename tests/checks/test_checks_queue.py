"""The queue checks (QUEUE-002..008), each seen failing on a really broken queue and passing again.

Everything runs against the live sandbox: the worker is really stopped, messages are really
pushed (as Redis's admin `default` user), Redis's maxmemory is really changed. Each test deletes
the lists it filled and starts the worker again before its last "passes" run. No test makes a
component log an error: the log check of a later daily run would report it.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid

import pytest
import redis
import requests
from support import RunChecks, eventually

from opsbook.inventory import Inventory
from opsbook.sandbox.stack import Stack

pytestmark = pytest.mark.sandbox

PENDING = "message_queue"
PROCESSING = "message_queue:processing"
DEAD_LETTER = "dead_letter_queue"
TIMEOUT_S = 3.0
# What a user wrote and who they are: evidence names messages by id, age and size instead.
CONTENT = "are you there?"
USER_ID = "opsbook-test"
OTHER_IN_FLIGHT = "opsbook-test:in-flight"  # a deployment whose consumers name theirs so


@pytest.fixture
def conversation(sandbox_inventory: Inventory, admin_redis: redis.Redis) -> str:
    """A conversation the database knows, made through the backend as a user would."""
    answer = requests.post(
        sandbox_inventory.http["backend"].url + "/api/messages",
        json={"content": "hello", "user_id": "opsbook-test"},
        timeout=TIMEOUT_S,
    )
    assert answer.status_code == 202, answer.text
    stored = answer.json()
    eventually(
        lambda: stored["id"] in admin_redis.lrange("processed_messages", 0, 99),
        "the worker stored the conversation's first message",
    )
    return str(stored["conversation_id"])


def message(conversation_id: str, enqueued_at: float | None = None) -> str:
    """A queued message as the backend writes it."""
    return json.dumps(
        {
            "id": str(uuid.uuid4()),
            "conversation_id": conversation_id,
            "user_id": USER_ID,
            "role": "user",
            "content": CONTENT,
            "enqueued_at": time.time() if enqueued_at is None else enqueued_at,
        }
    )


def leaked(evidence: object, *more: str) -> list[str]:
    """What of a message's content, its user id (and `more`) a row's evidence shows."""
    text = json.dumps(evidence)
    return [secret for secret in (CONTENT, USER_ID, *more) if secret in text]


def push(client: redis.Redis, key: str, payloads: list[str]) -> None:
    pipe = client.pipeline(transaction=False)
    for payload in payloads:
        pipe.lpush(key, payload)
    pipe.execute()


def restore_queue(stack: Stack, client: redis.Redis, *keys: str) -> None:
    """Delete what the test pushed, start the worker, and wait until nothing is queued."""
    client.delete(PENDING, *keys)
    stack.start("worker")
    eventually(
        lambda: client.llen(PENDING) == 0 and client.llen(PROCESSING) == 0,
        "message_queue and its processing list are empty",
    )


@pytest.mark.breaks("QUEUE-002")
def test_redis_memory_near_maxmemory_fails_queue_002(
    sandbox: Stack, admin_redis: redis.Redis, run_checks: RunChecks
) -> None:
    original = admin_redis.config_get("maxmemory")["maxmemory"]
    used = int(admin_redis.info("memory")["used_memory"])
    try:
        # Use at 92% of the limit, above the 90% allowed: the queue would soon refuse messages.
        # The checker's own connection adds a few percent; 100% would make Redis refuse the
        # worker's BLMOVE (noeviction) and fill worker.log with errors.
        admin_redis.config_set("maxmemory", int(used / 0.92))
        run = run_checks("--check=QUEUE-002")
        assert run.exit_code == 1, run.output
        row = run.row("QUEUE-002", "queue")
        assert row["outcome"] == "failed"
        assert row["observed"] >= 90, row
        assert row["unit"] == "%", row
        assert re.fullmatch(
            r"redis queue: memory use \d+ % of maxmemory \([\d.]+ MiB of [\d.]+ MiB, "
            r"policy noeviction\) \(expected < 90 % of maxmemory\)",
            row["message"],
        ), row["message"]
        assert "maxmemory_policy" in row["evidence"]["INFO memory"]

        admin_redis.config_set("maxmemory", 0)
        run = run_checks("--check=QUEUE-002")
        row = run.row("QUEUE-002", "queue")
        assert row["outcome"] == "failed"
        assert row["observed"] == "maxmemory 0 (no limit)"
        assert row["message"].startswith(
            "redis queue: maxmemory is not set: Redis would grow until the host runs out of memory"
        ), row["message"]
    finally:
        admin_redis.config_set("maxmemory", original)
    run = run_checks("--check=QUEUE-002")
    assert run.exit_code == 0, run.output
    assert run.row("QUEUE-002", "queue")["observed"] < 90


@pytest.mark.breaks("QUEUE-003")
def test_backlog_over_the_limit_fails_queue_003(
    breakable_sandbox: Stack, admin_redis: redis.Redis, conversation: str, run_checks: RunChecks
) -> None:
    breakable_sandbox.stop("worker")
    try:
        payloads = [message(conversation) for _ in range(1001)]
        push(admin_redis, PENDING, payloads)
        run = run_checks("--check=QUEUE-003")
        assert run.exit_code == 1, run.output
        row = run.row("QUEUE-003", "queue")
        assert row["outcome"] == "failed"
        assert row["observed"] == 1001
        assert row["message"] == "redis queue: message_queue holds 1001 messages (expected <= 1000)"
        # The three oldest (pushed first), by id, age and size: never their content.
        oldest = json.loads(row["evidence"]["oldest messages"])
        assert [m["id"] for m in oldest] == [json.loads(p)["id"] for p in payloads[:3]]
        assert [m["size_bytes"] for m in oldest] == [len(p) for p in payloads[:3]]
        assert all(0 <= m["age_s"] < 60 for m in oldest), oldest
        assert not leaked(row["evidence"], conversation), row["evidence"]

        admin_redis.rpop(PENDING)  # exactly at the limit: still fine
        run = run_checks("--check=QUEUE-003")
        assert run.outcome("QUEUE-003", "queue") == "passed", run.output
    finally:
        restore_queue(breakable_sandbox, admin_redis)
    run = run_checks("--check=QUEUE-003")
    assert run.exit_code == 0, run.output
    assert run.row("QUEUE-003", "queue")["observed"] == 0


@pytest.mark.breaks("QUEUE-004")
def test_dead_letters_over_the_limit_fail_queue_004(
    sandbox: Stack, admin_redis: redis.Redis, run_checks: RunChecks
) -> None:
    admin_redis.delete(DEAD_LETTER)
    poison = [f"poison {i} {uuid.uuid4()}" for i in range(11)]  # not JSON: never storable
    try:
        # Straight onto the dead-letter queue, as the worker would put them (test_sandbox.py
        # proves that it does): through the worker, each would leave an ERROR line in
        # worker.log, which the log check of the next daily run would rightly report.
        push(admin_redis, DEAD_LETTER, poison)
        run = run_checks("--check=QUEUE-004")
        assert run.exit_code == 1, run.output
        row = run.row("QUEUE-004", "queue")
        assert row["outcome"] == "failed"
        assert row["observed"] == 11
        assert row["message"] == "redis queue: dead_letter_queue holds 11 messages (expected <= 10)"
        # Not JSON, so no id and no age: only their sizes are shown, never their text.
        assert json.loads(row["evidence"]["newest dead letters"]) == [
            {"id": None, "age_s": None, "size_bytes": len(p), "unreadable": "not JSON"}
            for p in poison[:-4:-1]
        ]
    finally:
        admin_redis.delete(DEAD_LETTER)
    run = run_checks("--check=QUEUE-004")
    assert run.exit_code == 0, run.output
    assert run.row("QUEUE-004", "queue")["observed"] == 0


@pytest.mark.breaks("QUEUE-005")
def test_old_or_unreadable_oldest_message_fails_queue_005(
    breakable_sandbox: Stack, admin_redis: redis.Redis, conversation: str, run_checks: RunChecks
) -> None:
    checker_password = (breakable_sandbox.dir / "secrets" / "redis-opsbook.password").read_text()
    breakable_sandbox.stop("worker")
    try:
        # The worker takes from the right: the first pushed is the oldest.
        old = message(conversation, time.time() - 600)
        push(admin_redis, PENDING, [old, message(conversation)])
        run = run_checks("--check=QUEUE-005")
        assert run.exit_code == 1, run.output
        row = run.row("QUEUE-005", "queue")
        assert row["outcome"] == "failed"
        assert 600 <= row["observed"] < 660, row
        assert row["unit"] == "s", row
        assert re.fullmatch(
            r"redis queue: the oldest message in message_queue waits for 6\d\d s "
            r"\(expected < 300 s\)",
            row["message"],
        ), row["message"]
        shown = json.loads(row["evidence"]["oldest message"])
        assert (shown["id"], shown["size_bytes"]) == (json.loads(old)["id"], len(old))
        assert 600 <= shown["age_s"] < 660, shown
        assert not leaked(row["evidence"], conversation), row["evidence"]

        admin_redis.rpop(PENDING)  # the fresh one is now the oldest
        run = run_checks("--check=QUEUE-005")
        assert run.outcome("QUEUE-005", "queue") == "passed", run.output
        assert run.row("QUEUE-005", "queue")["observed"] < 60

        # Unreadable, and carrying a secret that must not reach the report.
        garbage = f"garbage password-was-{checker_password.strip()}"
        admin_redis.rpush(PENDING, garbage)
        run = run_checks("--check=QUEUE-005")
        row = run.row("QUEUE-005", "queue")
        assert row["outcome"] == "failed"
        assert row["observed"] == "unreadable"
        assert row["message"].startswith(
            "redis queue: the oldest message in message_queue has no readable enqueued_at "
            "(not JSON)"
        ), row["message"]
        assert json.loads(row["evidence"]["oldest message"]) == {
            "id": None, "age_s": None, "size_bytes": len(garbage), "unreadable": "not JSON"
        }  # fmt: skip

        # A value of the message in its enqueued_at is not echoed either: only its type.
        admin_redis.rpush(PENDING, json.dumps({"id": "x", "enqueued_at": CONTENT}))
        run = run_checks("--check=QUEUE-005")
        row = run.row("QUEUE-005", "queue")
        assert row["message"].startswith(
            "redis queue: the oldest message in message_queue has no readable enqueued_at "
            "(enqueued_at is not a unix time (a JSON string))"
        ), row["message"]
        assert CONTENT not in json.dumps(row), row
    finally:
        restore_queue(breakable_sandbox, admin_redis)
    run = run_checks("--check=QUEUE-005")
    assert run.exit_code == 0, run.output
    assert run.row("QUEUE-005", "queue")["observed"] == "queue empty"


@pytest.mark.breaks("QUEUE-006")
def test_stopped_worker_fails_queue_006_and_a_busy_one_passes(
    breakable_sandbox: Stack, admin_redis: redis.Redis, conversation: str, run_checks: RunChecks
) -> None:
    breakable_sandbox.stop("worker")
    try:
        push(admin_redis, PENDING, [message(conversation)])
        run = run_checks("--check=QUEUE-006")
        assert run.exit_code == 1, run.output
        row = run.row("QUEUE-006", "queue")
        assert row["outcome"] == "failed"
        assert row["observed"] == {"processed": 0, "waiting": 1}
        assert row["message"] == (
            "redis queue: message_queue is not draining: 0 messages processed in 0.5 s "
            "while 1 wait (expected > 0 processed in 0.5 s while messages wait)"
        )

        # A backlog the worker needs seconds to work through (it stores about 1000/s here):
        # the check must see it draining, not only an empty queue.
        push(admin_redis, PENDING, [message(conversation) for _ in range(10_000)])
        breakable_sandbox.start("worker")
        run = run_checks("--check=QUEUE-006")
        assert run.exit_code == 0, run.output
        observed = run.row("QUEUE-006", "queue")["observed"]
        # None would mean the queue was already empty: the backlog was too small to see.
        assert observed["processed"] is not None, observed
        assert observed["processed"] > 0, observed
    finally:
        restore_queue(breakable_sandbox, admin_redis)
    run = run_checks("--check=QUEUE-006")
    assert run.exit_code == 0, run.output
    assert run.row("QUEUE-006", "queue")["observed"]["waiting"] == 0


@pytest.mark.breaks("QUEUE-007")
def test_nothing_stored_while_messages_wait_fails_queue_007(
    breakable_sandbox: Stack, admin_redis: redis.Redis, conversation: str, run_checks: RunChecks
) -> None:
    # `conversation` stored one message just now: the default one-hour window holds it.
    breakable_sandbox.stop("worker")
    try:
        waiting = message(conversation)
        push(admin_redis, PENDING, [waiting])
        time.sleep(1.1)  # nothing has been stored since more than the 1 s window below
        run = run_checks("--check=QUEUE-007", env={"OPSBOOK__THRESHOLDS__PROCESSED_WINDOW_S": "1"})
        assert run.exit_code == 1, run.output
        row = run.row("QUEUE-007", "chatdb-queue")
        assert row["outcome"] == "failed"
        assert row["observed"] == 0
        assert row["message"] == (
            "postgres chatdb-queue: 1 messages wait in redis queue's message_queue but 0 were "
            "stored in the last 1 s (expected > 0 in the last 1 s while messages wait)"
        )
        shown = json.loads(row["evidence"]["oldest waiting message"])
        assert shown["id"] == json.loads(waiting)["id"], shown
        assert not leaked(row["evidence"], conversation), row["evidence"]

        run = run_checks("--check=QUEUE-007")  # the hour holds the conversation's message
        assert run.outcome("QUEUE-007", "chatdb-queue") == "passed", run.output
        assert run.row("QUEUE-007", "chatdb-queue")["observed"] >= 1
    finally:
        restore_queue(breakable_sandbox, admin_redis)
    # Idle: nothing stored in the window, but nothing waits either.
    run = run_checks("--check=QUEUE-007", env={"OPSBOOK__THRESHOLDS__PROCESSED_WINDOW_S": "1"})
    assert run.exit_code == 0, run.output


@pytest.mark.breaks("QUEUE-008")
def test_a_message_stuck_in_flight_fails_queue_008(
    breakable_sandbox: Stack, admin_redis: redis.Redis, conversation: str, run_checks: RunChecks
) -> None:
    dead = f"{PROCESSING}:worker-9"  # a consumer that is gone: nobody recovers its list
    stuck = message(conversation, time.time() - 900)
    breakable_sandbox.stop("worker")
    try:
        # The worker died holding a message, and has not been started again.
        push(admin_redis, PROCESSING, [stuck])
        run = run_checks("--check=QUEUE-008")
        assert run.exit_code == 1, run.output
        row = run.row("QUEUE-008", "queue")
        assert row["outcome"] == "failed"
        assert (row["observed"], row["unit"]) == (1, "count"), row
        assert re.fullmatch(
            r"redis queue: 1 message held in flight longer than 300 s, the oldest for 9\d\d s, "
            r"in message_queue:processing \(expected 0 held in flight longer than 300 s\)",
            row["message"],
        ), row["message"]
        (shown,) = json.loads(row["evidence"]["stuck in flight"])
        assert shown["in_flight"] == PROCESSING
        assert (shown["id"], shown["size_bytes"]) == (json.loads(stuck)["id"], len(stuck))
        assert 900 <= shown["age_s"] < 960, shown
        assert not leaked(row["evidence"], conversation), row["evidence"]

        # The list's name is the inventory's: under another, that list is read, not this one.
        renamed = {"OPSBOOK__REDIS__QUEUE__QUEUES__IN_FLIGHT": OTHER_IN_FLIGHT}
        run = run_checks("--check=QUEUE-008", env=renamed)
        assert run.outcome("QUEUE-008", "queue") == "passed", run.output
        push(admin_redis, f"{OTHER_IN_FLIGHT}:consumer-2", [message(conversation, 0)])
        run = run_checks("--check=QUEUE-008", env=renamed)
        assert run.row("QUEUE-008", "queue")["message"].endswith(
            f"in {OTHER_IN_FLIGHT}:consumer-2 (expected 0 held in flight longer than 300 s)"
        ), run.output
        admin_redis.delete(f"{OTHER_IN_FLIGHT}:consumer-2")
        # ... and its limit is the inventory's.
        later = {"OPSBOOK__THRESHOLDS__IN_FLIGHT_AGE_S": "1000"}
        run = run_checks("--check=QUEUE-008", env=later)
        assert run.outcome("QUEUE-008", "queue") == "passed", run.output
        admin_redis.delete(PROCESSING)

        # A further consumer's own list (IN_FLIGHT:NAME) is read too; a message just taken,
        # as a live consumer holds one, is not stuck.
        push(admin_redis, dead, [stuck])
        push(admin_redis, PROCESSING, [message(conversation)])
        run = run_checks("--check=QUEUE-008")
        assert run.exit_code == 1, run.output
        row = run.row("QUEUE-008", "queue")
        assert row["observed"] == 1, row
        assert row["message"].endswith(
            " in message_queue:processing:worker-9 (expected 0 held in flight longer than 300 s)"
        ), row["message"]
    finally:
        restore_queue(
            breakable_sandbox, admin_redis, PROCESSING, dead, f"{OTHER_IN_FLIGHT}:consumer-2"
        )
    run = run_checks("--check=QUEUE-008")
    assert run.exit_code == 0, run.output
    row = run.row("QUEUE-008", "queue")
    assert (row["outcome"], row["observed"]) == ("passed", 0), row


@pytest.mark.breaks("QUEUE-001")
def test_stopped_redis_fails_queue_001(fresh_sandbox: Stack, run_checks: RunChecks) -> None:
    """A sandbox of its own: with Redis gone, the backend and the worker log errors, which
    LOG-001 on the shared sandbox would report for five minutes."""
    stack = fresh_sandbox
    # QUEUE-001 alone is a post-deploy gate's selection, and a gate first waits for every
    # service up to the readiness deadline (2 minutes by default): 1 s is enough here.
    fast = {"OPSBOOK__DEPLOY__READINESS_DEADLINE_S": "1"}
    run = run_checks("--check=QUEUE-001", inventory=stack.inventory_path, env=fast)
    assert run.exit_code == 0, run.output
    assert run.row("QUEUE-001", "queue")["observed"] == "PONG"
    stack.stop("redis")
    try:
        run = run_checks("--check=QUEUE-001", inventory=stack.inventory_path, env=fast)
    finally:
        stack.start("redis")
    assert run.exit_code == 1, run.output
    row = run.row("QUEUE-001", "queue")
    assert (row["outcome"], row["observed"], row["expected"]) == ("failed", "no PONG", "PONG")
    port = stack.state.ports["redis"]
    assert row["message"].startswith("redis queue: "), row["message"]
    assert f"127.0.0.1:{port}. Connection refused" in row["message"], row["message"]
    run = run_checks("--check=QUEUE-001", inventory=stack.inventory_path, env=fast)
    assert run.exit_code == 0, run.output
    assert run.outcome("QUEUE-001", "queue") == "passed"


STUCK = f"{PROCESSING}:opsbook-test-stuck"  # the in-flight list of a consumer that hangs


@pytest.mark.breaks("DEPLOY-006")
def test_the_canary_says_where_a_message_that_was_not_stored_is(
    breakable_sandbox: Stack, admin_redis: redis.Redis, run_checks: RunChecks
) -> None:
    """With the worker stopped, the canary's message stays queued and DEPLOY-006 says no
    consumer took it. With a consumer that takes it and hangs (the test's own BLMOVE, as a
    worker stuck on a slow database or DNS does), DEPLOY-006 names the list that holds it and
    leaves its conversation: once the message is back in the queue, the worker stores it,
    rather than dead-lettering it for a conversation the canary deleted."""
    stack = breakable_sandbox
    stack.stop("worker")
    taken: list[str] = []
    try:
        queued = run_checks("--check=DEPLOY-006", "-m", "postdeploy")
        row = queued.row("DEPLOY-006")
        assert row["outcome"] == "failed", queued.output
        assert (
            "not in PostgreSQL after 10 s: still in message_queue: no consumer took it"
            in (row["message"])
        ), row["message"]
        assert admin_redis.llen(PENDING) == 0  # the cleanup took it off the queue

        # A client of its own: the BLMOVE blocks for longer than admin_redis's socket timeout.
        password = (stack.dir / "secrets" / "redis-default.password").read_text().strip()

        def hang() -> None:
            with redis.Redis(
                port=stack.state.ports["redis"], password=password, socket_timeout=40,
                decode_responses=True,
            ) as client:  # fmt: skip
                raw = client.blmove(PENDING, STUCK, 30, "RIGHT", "LEFT")
            if raw is not None:
                taken.append(str(raw))

        consumer = threading.Thread(target=hang, daemon=True)
        consumer.start()
        held = run_checks("--check=DEPLOY-006", "-m", "postdeploy")
        consumer.join(timeout=35)
        row = held.row("DEPLOY-006")
        assert row["outcome"] == "failed", held.output
        assert (
            f"after 10 s: taken by a consumer, held in {STUCK} and not stored" in (row["message"])
        ), row["message"]
        assert "left conversation" in json.dumps(row["evidence"]), row["evidence"]
        (raw,) = taken
        canary = json.loads(raw)
        # What QUEUE-008's fix does with a message stuck in flight: back to the queue.
        assert admin_redis.lmove(STUCK, PENDING, "LEFT", "RIGHT") == raw
    finally:
        stack.start("worker")
    eventually(
        lambda: canary["id"] in admin_redis.lrange("processed_messages", 0, 99),
        "the worker stored the canary's message",
    )
    assert admin_redis.llen(DEAD_LETTER) == 0
    admin_redis.lrem("processed_messages", 0, canary["id"])
    stack.component("postgres").psql(
        f"DELETE FROM messages WHERE id = '{canary['id']}'; "
        f"DELETE FROM conversations WHERE id = '{canary['conversation_id']}'",
        "chatdb",
    )
