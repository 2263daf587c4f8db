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
    )
    yield lists
    admin_redis.delete(lists.pending, lists.dead_letter, lists.processed)


def message(enqueued_at: float) -> str:
    return json.dumps({"id": str(uuid.uuid4()), "enqueued_at": enqueued_at})


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
    assert probe.messages(checker, queues.pending, -1, -1) == [old]
    oldest = probe.oldest_message(checker, queues.pending)
    assert oldest is not None
    assert oldest.raw == old
    assert oldest.age_s is not None
    assert 600 <= oldest.age_s < 660


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
