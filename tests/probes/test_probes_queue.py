"""The queue probes against the sandbox's real Redis, read as the checker reads it.

Each test works on lists of its own (no worker takes from them), planted as Redis's admin user
and deleted afterwards, so that the sandbox's real queue is left alone.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import msgspec
import pytest
import redis

from opsbook.errors import NotEvaluated
from opsbook.inventory import Inventory, Queues, Redis
from opsbook.probes import queue as probe
from opsbook.targets import RedisTarget

TIMEOUT_S = 3.0


@pytest.fixture
def checker(sandbox_inventory: Inventory) -> Iterator[RedisTarget]:
    """The sandbox's Redis with the checker's read-only credentials."""
    target = RedisTarget("queue", sandbox_inventory.redis["queue"], TIMEOUT_S)
    yield target
    target.close()


@pytest.fixture
def queues(admin_redis: redis.Redis) -> Iterator[Queues]:
    prefix = f"opsbook-test:{uuid.uuid4()}"
    lists = Queues(
        pending=f"{prefix}:pending",
        dead_letter=f"{prefix}:dead",
        processed=f"{prefix}:processed",
        in_flight=f"{prefix}:processing",
    )
    yield lists
    admin_redis.delete(lists.pending, lists.dead_letter, lists.processed, lists.in_flight)
    for key in admin_redis.scan_iter(match=f"{prefix}:*"):
        admin_redis.delete(key)


def message(enqueued_at: float, content: str = "hello") -> str:
    return json.dumps(
        {"id": str(uuid.uuid4()), "user_id": "someone", "content": content,
         "enqueued_at": enqueued_at}
    )  # fmt: skip


def test_memory_is_what_info_says(checker: RedisTarget, admin_redis: redis.Redis) -> None:
    memory = probe.memory(checker)
    assert memory.used_bytes > 0
    assert memory.maxmemory_bytes == int(admin_redis.config_get("maxmemory")["maxmemory"])
    assert memory.policy == admin_redis.config_get("maxmemory-policy")["maxmemory-policy"]
    assert memory.evidence["maxmemory_policy"] == memory.policy
    if memory.maxmemory_bytes:
        assert memory.used_percent == pytest.approx(
            100 * memory.used_bytes / memory.maxmemory_bytes
        )


def test_depth_messages_and_the_oldest(
    checker: RedisTarget, admin_redis: redis.Redis, queues: Queues
) -> None:
    assert probe.depth(checker, queues.pending) == 0
    assert probe.oldest_message(checker, queues.pending) is None
    # LPUSH, as the backend does: the first pushed is at the right end, the oldest.
    old, new = message(time.time() - 600), message(time.time())
    admin_redis.lpush(queues.pending, old, new)
    assert probe.depth(checker, queues.pending) == 2
    (shown,) = probe.messages(checker, queues.pending, -1, -1)
    assert (shown.id, shown.size_bytes) == (json.loads(old)["id"], len(old))
    oldest = probe.oldest_message(checker, queues.pending)
    assert oldest is not None
    assert oldest.id == shown.id
    assert oldest.age_s is not None
    assert 600 <= oldest.age_s < 660


def test_a_message_is_shown_by_id_age_and_size_never_its_content() -> None:
    now = time.time()
    raw = message(now - 5, content="my password is hunter2 ✓")
    shown = probe.QueuedMessage.of(raw, now)
    assert shown == probe.QueuedMessage(
        json.loads(raw)["id"], 5.0, len(raw.encode()), ""
    )  # the size in bytes: ✓ is three
    # An id that is not a UUID may be anything a client sent: not shown.
    odd = json.dumps({"id": "hunter2", "enqueued_at": "hunter2 again"})
    assert probe.QueuedMessage.of(odd, now) == probe.QueuedMessage(
        None, None, len(odd), "enqueued_at is not a unix time (a JSON string)"
    )
    assert "hunter2" not in json.dumps(msgspec.to_builtins(probe.QueuedMessage.of(odd, now)))


def test_an_unreadable_oldest_message_has_no_age(
    checker: RedisTarget, admin_redis: redis.Redis, queues: Queues
) -> None:
    admin_redis.lpush(queues.pending, "not json at all")
    oldest = probe.oldest_message(checker, queues.pending)
    assert oldest is not None
    assert (oldest.age_s, oldest.unreadable) == (None, "not JSON")


def test_an_empty_queue_costs_no_wait(checker: RedisTarget, queues: Queues) -> None:
    started = time.monotonic()
    drain = probe.drain(checker, queues, window_s=5)
    assert time.monotonic() - started < 1
    assert (drain.processed, drain.waiting, drain.stalled) == (None, 0, False)


def test_waiting_messages_nobody_takes_are_stalled(
    checker: RedisTarget, admin_redis: redis.Redis, queues: Queues
) -> None:
    admin_redis.lpush(queues.pending, message(time.time()))
    drain = probe.drain(checker, queues, window_s=0.2)
    assert (drain.processed, drain.waiting, drain.stalled) == (0, 1, True)


def test_progress_counts_even_when_processed_is_capped(
    checker: RedisTarget, admin_redis: redis.Redis, queues: Queues
) -> None:
    """A deployment that keeps processed_messages at a fixed length (LPUSH + LTRIM) still
    shows progress: a new id at its head."""
    admin_redis.lpush(queues.pending, message(time.time()))
    admin_redis.lpush(queues.processed, "done-1")

    def worker() -> None:
        time.sleep(0.1)
        pipe = admin_redis.pipeline()
        pipe.lpush(queues.processed, "done-2")
        pipe.ltrim(queues.processed, 0, 0)
        pipe.execute()

    thread = threading.Thread(target=worker)
    thread.start()
    drain = probe.drain(checker, queues, window_s=0.5)
    thread.join()
    assert drain.after is not None
    assert drain.before.processed == drain.after.processed == 1
    assert drain.processed == 1
    assert not drain.stalled


def test_in_flight_finds_every_consumers_list_and_what_is_stuck(
    checker: RedisTarget, admin_redis: redis.Redis, queues: Queues
) -> None:
    held = probe.in_flight(checker, queues, older_than_s=300, window_s=5)
    assert (held.lists, held.stuck, held.held) == ({}, (), 0)  # nothing held: no wait either
    old, older, fresh = message(time.time() - 400), message(time.time() - 900), message(time.time())
    admin_redis.lpush(queues.in_flight, fresh)
    admin_redis.lpush(f"{queues.in_flight}:worker-2", old)
    admin_redis.lpush(f"{queues.in_flight}:worker-3", older, "not json")
    admin_redis.set(f"{queues.in_flight}:not-a-list", "x")  # not a list: not an in-flight list
    assert probe.in_flight_lists(checker, queues) == [
        queues.in_flight, f"{queues.in_flight}:worker-2", f"{queues.in_flight}:worker-3"
    ]  # fmt: skip
    held = probe.in_flight(checker, queues, older_than_s=300, window_s=0.1)
    assert held.lists == {
        queues.in_flight: 1, f"{queues.in_flight}:worker-2": 1, f"{queues.in_flight}:worker-3": 2
    }  # fmt: skip
    assert (held.held, held.unreadable) == (4, 1)
    assert [(m.in_flight, m.id) for m in held.stuck] == [  # oldest first
        (f"{queues.in_flight}:worker-3", json.loads(older)["id"]),
        (f"{queues.in_flight}:worker-2", json.loads(old)["id"]),
    ]
    assert held.oldest_age_s is not None
    assert 900 <= held.oldest_age_s < 960


def test_an_old_message_a_consumer_finishes_within_the_window_is_not_stuck(
    checker: RedisTarget, admin_redis: redis.Redis, queues: Queues
) -> None:
    """A live consumer takes a message that waited long in the queue and stores it at once."""
    taken = message(time.time() - 900)
    admin_redis.lpush(queues.in_flight, taken)

    def consumer() -> None:
        time.sleep(0.1)
        admin_redis.lrem(queues.in_flight, 1, taken)

    thread = threading.Thread(target=consumer)
    thread.start()
    held = probe.in_flight(checker, queues, older_than_s=300, window_s=0.5)
    thread.join()
    assert held.stuck == ()


def closed_port() -> int:
    """A port nothing listens on (bound to find it, closed before use)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_a_redis_that_is_gone_is_not_evaluated() -> None:
    spec = Redis(url=f"redis://127.0.0.1:{closed_port()}/0")
    gone = RedisTarget("gone", spec, TIMEOUT_S)
    with pytest.raises(NotEvaluated, match=r"redis gone \("):
        probe.depth(gone, "message_queue")
