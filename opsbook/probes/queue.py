"""The message queue's facts: Redis answers, memory against its limit, depths, ages, drain.

The probes read Redis (each call bounded by the client's socket timeout) and return facts; the
checks in checks/test_queue.py and the fixes in remediation/queue.py decide what they mean, so
that a fix never disagrees with its check. A Redis error becomes `NotEvaluated`, naming the
target: a fact that could not be read is never made up.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, TypeVar

from msgspec import Struct

from opsbook.errors import NotEvaluated

if TYPE_CHECKING:
    from redis import Redis

    from opsbook.inventory import Queues
    from opsbook.targets import RedisTarget

T = TypeVar("T")

MIB = 1024 * 1024

# The part of INFO memory kept as evidence when memory is short.
MEMORY_EVIDENCE = (
    "used_memory_human",
    "used_memory_peak_human",
    "maxmemory_human",
    "maxmemory_policy",
    "mem_fragmentation_ratio",
)


class UnreadableMessage(ValueError):
    """A queued message whose enqueued_at cannot be read; the text says why."""


class RedisMemory(Struct, frozen=True):
    """The part of INFO memory that says how close Redis is to its limit."""

    used_bytes: int
    maxmemory_bytes: int  # 0 means no limit
    policy: str
    evidence: dict[str, object] = {}

    @classmethod
    def from_info(cls, info: Mapping[str, object]) -> RedisMemory:
        return cls(
            used_bytes=_count(info, "used_memory"),
            maxmemory_bytes=_count(info, "maxmemory"),
            policy=str(info.get("maxmemory_policy", "unknown")),
            evidence={key: info.get(key) for key in MEMORY_EVIDENCE},
        )

    @property
    def used_mib(self) -> float:
        return round(self.used_bytes / MIB, 1)

    @property
    def maxmemory_mib(self) -> float:
        return round(self.maxmemory_bytes / MIB, 1)

    @property
    def used_percent(self) -> float | None:
        """Used memory as a percentage of maxmemory; None when there is no limit."""
        return None if self.maxmemory_bytes == 0 else 100.0 * self.used_bytes / self.maxmemory_bytes


def _count(info: Mapping[str, object], key: str) -> int:
    value = info.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise ValueError(f"INFO memory has no usable {key}: {value!r}")


def enqueued_at(raw: str) -> float:
    """The unix time at which a queued message (the backend's JSON) was enqueued."""
    try:
        data = json.loads(raw)
    except ValueError:
        raise UnreadableMessage("not JSON") from None
    if not isinstance(data, dict):
        raise UnreadableMessage("not a JSON object")
    if "enqueued_at" not in data:
        raise UnreadableMessage("no enqueued_at field")
    value = data["enqueued_at"]
    # bool is an int to Python, and json.loads accepts NaN and Infinity: none is a time.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UnreadableMessage(f"enqueued_at is not a unix time: {str(value)[:40]!r}")
    return float(value)


class DrainSample(Struct, frozen=True):
    """One look at the queue: what was processed so far and what waits."""

    processed: int  # LLEN processed_messages
    newest_processed: str | None  # LINDEX processed_messages 0
    waiting: int  # LLEN message_queue


def processed_between(before: DrainSample, after: DrainSample) -> int:
    """How many messages were processed between two samples.

    A deployment may cap processed_messages (LPUSH + LTRIM), so that its length stops growing;
    a new id at its head then still counts as progress.
    """
    grown = after.processed - before.processed
    if grown > 0:
        return grown
    return 1 if after.newest_processed != before.newest_processed else 0


class Drain(Struct, frozen=True):
    """Whether the queue drains: two samples `window_s` apart (one, when nothing waited)."""

    window_s: float
    before: DrainSample
    after: DrainSample | None  # None: nothing waited, so there was nothing to wait for

    @property
    def processed(self) -> int | None:
        """Messages processed within the window; None when nothing waited."""
        return None if self.after is None else processed_between(self.before, self.after)

    @property
    def waiting(self) -> int:
        return self.before.waiting if self.after is None else self.after.waiting

    @property
    def stalled(self) -> bool:
        """Messages wait and none was processed in the window."""
        return self.processed == 0 and self.waiting > 0


def _label(target: RedisTarget) -> str:
    return f"redis {target.name}"


def _read(target: RedisTarget, what: str, call: Callable[[Redis], T]) -> T:
    """Ask the target's client; a Redis error (a timeout, a refused command) is a fact that
    could not be read."""
    import redis

    client = target.client()
    try:
        return call(client)
    except redis.RedisError as exc:
        raise NotEvaluated(f"{_label(target)}: {what}: {exc}") from None


def memory(target: RedisTarget) -> RedisMemory:
    """INFO memory: how much Redis uses and its maxmemory."""
    info = _read(target, "INFO memory", lambda client: client.info("memory"))
    try:
        return RedisMemory.from_info(info)
    except ValueError as exc:
        raise NotEvaluated(f"{_label(target)}: {exc}") from None


def depth(target: RedisTarget, queue: str) -> int:
    """LLEN of a list: how many messages it holds."""
    return int(_read(target, f"LLEN {queue}", lambda client: client.llen(queue)))


def messages(target: RedisTarget, queue: str, first: int, last: int) -> list[str]:
    """LRANGE: raw messages of a list, for evidence (the left end is the newest)."""
    return [
        str(raw) for raw in _read(target, f"LRANGE {queue}", lambda c: c.lrange(queue, first, last))
    ]


class OldestMessage(Struct, frozen=True):
    """The message that has waited longest, and for how long (None: unreadable enqueued_at)."""

    raw: str
    age_s: float | None
    unreadable: str = ""  # why its age cannot be told


def oldest_message(target: RedisTarget, queue: str) -> OldestMessage | None:
    """The message at the right end of the queue (the worker takes from the right); None when
    the queue is empty."""
    raw = _read(target, f"LINDEX {queue} -1", lambda client: client.lindex(queue, -1))
    if raw is None:
        return None
    try:
        return OldestMessage(str(raw), time.time() - enqueued_at(str(raw)))
    except UnreadableMessage as exc:
        return OldestMessage(str(raw), None, str(exc))


def drain_sample(target: RedisTarget, queues: Queues) -> DrainSample:
    """One look at the queue, in one round trip, so that both lengths describe one moment."""

    def sample(client: Redis) -> DrainSample:
        pipe = client.pipeline(transaction=False)
        pipe.llen(queues.processed)
        pipe.lindex(queues.processed, 0)
        pipe.llen(queues.pending)
        processed, newest, waiting = pipe.execute()
        return DrainSample(int(processed), newest, int(waiting))

    return _read(target, "drain sample", sample)


def drain(target: RedisTarget, queues: Queues, window_s: float) -> Drain:
    """Whether messages are taken: two samples `window_s` apart; one when nothing waits, so
    that an idle queue costs no wait."""
    before = drain_sample(target, queues)
    if before.waiting == 0:
        return Drain(window_s, before, None)
    time.sleep(window_s)
    return Drain(window_s, before, drain_sample(target, queues))
