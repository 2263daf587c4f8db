"""The message queue's facts: Redis memory against its limit, a message's age, drain progress.

Pure functions over what Redis answered; the checks in checks/test_queue.py do the reading and
decide what the facts mean.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

from msgspec import Struct


class UnreadableMessage(ValueError):
    """A queued message whose enqueued_at cannot be read; the text says why."""


class RedisMemory(Struct, frozen=True):
    """The part of INFO memory that says how close Redis is to its limit."""

    used: int
    maxmemory: int  # 0 means no limit
    policy: str

    @classmethod
    def from_info(cls, info: Mapping[str, object]) -> RedisMemory:
        return cls(
            used=_count(info, "used_memory"),
            maxmemory=_count(info, "maxmemory"),
            policy=str(info.get("maxmemory_policy", "unknown")),
        )

    @property
    def percent(self) -> float | None:
        """Used memory as a percentage of maxmemory; None when there is no limit."""
        return None if self.maxmemory == 0 else 100.0 * self.used / self.maxmemory


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
