"""The message queue's facts: Redis answers, memory against its limit, depths, ages, drain.

The probes read Redis (each call bounded by the client's socket timeout) and return facts; the
checks in checks/test_queue.py and the fixes in remediation/queue.py decide what they mean, so
that a fix never disagrees with its check. A Redis error becomes `NotEvaluated`, naming the
target: a fact that could not be read is never made up.

A message is users' data (its content, its user_id): no fact returned here holds it. A message
is described by its id, its age and its size (`QueuedMessage`), which is all a report needs to
find it again in Redis or in the database.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
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


_NOT_JSON = object()


def _parsed(raw: str) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return _NOT_JSON


def _enqueued_at(data: object) -> float:
    """The unix time at which a queued message (the backend's JSON, parsed) was enqueued."""
    if data is _NOT_JSON:
        raise UnreadableMessage("not JSON")
    if not isinstance(data, dict):
        raise UnreadableMessage("not a JSON object")
    if "enqueued_at" not in data:
        raise UnreadableMessage("no enqueued_at field")
    value = data["enqueued_at"]
    # bool is an int to Python, and json.loads accepts NaN and Infinity: none is a time.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        # Its type, not its value: the value is the message's, and may be anything a user sent.
        raise UnreadableMessage(f"enqueued_at is not a unix time (a JSON {_json_type(value)})")
    return float(value)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


class QueuedMessage(Struct, frozen=True):
    """A queued message as a report may show it: id, age and size, never its content."""

    id: str | None  # the message's own id when it is a UUID (the backend's); None otherwise
    age_s: float | None  # since its enqueued_at; None when that cannot be read
    size_bytes: int
    unreadable: str = ""  # why its age cannot be told

    @classmethod
    def of(cls, raw: str, now: float) -> QueuedMessage:
        size = len(raw.encode("utf-8", "surrogatepass"))
        data = _parsed(raw)
        try:
            age_s: float | None = round(now - _enqueued_at(data), 1)
            why = ""
        except UnreadableMessage as exc:
            age_s, why = None, str(exc)
        return cls(_message_id(data), age_s, size, why)


def _message_id(data: object) -> str | None:
    """The message's id, only when it is a UUID: anything else in that field may be a user's
    text, and is not shown."""
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        return None
    try:
        return str(uuid.UUID(data["id"]))
    except ValueError:
        return None


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


def messages(target: RedisTarget, queue: str, first: int, last: int) -> list[QueuedMessage]:
    """LRANGE, for evidence: the messages of a list by id, age and size (the left end is the
    newest)."""
    found = _read(target, f"LRANGE {queue}", lambda c: c.lrange(queue, first, last))
    now = time.time()
    return [QueuedMessage.of(str(raw), now) for raw in found]


def oldest_message(target: RedisTarget, queue: str) -> QueuedMessage | None:
    """The message at the right end of the queue (the worker takes from the right); None when
    the queue is empty."""
    raw = _read(target, f"LINDEX {queue} -1", lambda client: client.lindex(queue, -1))
    return None if raw is None else QueuedMessage.of(str(raw), time.time())


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


# An in-flight list holds what its consumer is working on: one message, for milliseconds. The
# most read from each list (its oldest end); beyond that, messages are counted, not judged.
IN_FLIGHT_READ = 1000


class HeldMessage(Struct, frozen=True):
    """A message a consumer holds in flight: in which list, and its id, age and size."""

    in_flight: str
    id: str | None
    age_s: float | None
    size_bytes: int


class InFlight(Struct, frozen=True):
    """What the consumers hold in flight, and what of it is held past a limit.

    `stuck`: held longer than `older_than_s` (by its enqueued_at) at a first look and still
    held, by the same list, `window_s` later; a live consumer takes a message that waited long
    in the queue and stores it within milliseconds, so it is never counted. A message is named
    by the id the backend gives it (a UUID): one without, or without a readable enqueued_at,
    is counted in `unreadable` and never judged (the reference worker dead-letters it at once).
    """

    lists: dict[str, int]  # each in-flight list that exists, and how many messages it holds
    older_than_s: float
    window_s: float
    stuck: tuple[HeldMessage, ...]  # oldest first
    unreadable: int = 0  # held messages whose age cannot be told (never counted as stuck)

    @property
    def held(self) -> int:
        return sum(self.lists.values())

    @property
    def oldest_age_s(self) -> float | None:
        return max((m.age_s for m in self.stuck if m.age_s is not None), default=None)


def further_in_flight(queues: Queues) -> str:
    """The SCAN pattern of further consumers' in-flight lists: `IN_FLIGHT:*`, its name escaped."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", queues.in_flight) + ":*"


def in_flight_lists(target: RedisTarget, queues: Queues) -> list[str]:
    """The in-flight lists: `queues.in_flight` and every list named `IN_FLIGHT:NAME` (those
    of further consumers, the reference worker's message_queue:processing:worker-2), sorted;
    found with SCAN (never KEYS, which blocks Redis)."""
    pattern = further_in_flight(queues)

    def scan(client: Redis) -> list[str]:
        found = {str(key) for key in client.scan_iter(match=pattern, count=1000, _type="list")}
        if client.type(queues.in_flight) == "list":
            found.add(queues.in_flight)
        return sorted(found)

    return _read(target, f"SCAN {pattern}", scan)


def _held(target: RedisTarget, lists: list[str]) -> tuple[dict[str, int], list[HeldMessage]]:
    """One look at the in-flight lists, in one round trip: their lengths and the messages at
    their oldest ends (a consumer pushes what it takes at the left)."""

    def look(client: Redis) -> tuple[dict[str, int], list[HeldMessage]]:
        pipe = client.pipeline(transaction=False)
        for name in lists:
            pipe.llen(name)
            pipe.lrange(name, -IN_FLIGHT_READ, -1)
        answers = pipe.execute()
        now = time.time()
        lengths, held = {}, []
        for name, length, raws in zip(lists, answers[::2], answers[1::2], strict=True):
            if int(length):
                lengths[name] = int(length)
            for raw in reversed(raws):  # oldest first
                seen = QueuedMessage.of(str(raw), now)
                held.append(HeldMessage(name, seen.id, seen.age_s, seen.size_bytes))
        return lengths, held

    return _read(target, "in-flight lists", look)


def in_flight(
    target: RedisTarget, queues: Queues, older_than_s: float, window_s: float
) -> InFlight:
    """What the consumers hold in flight; what of it is held past `older_than_s` is looked at
    twice, `window_s` apart (no wait when nothing is that old)."""
    lists = in_flight_lists(target, queues)
    lengths, first = _held(target, lists)
    unreadable = sum(1 for m in first if m.id is None or m.age_s is None)

    def old(held: list[HeldMessage]) -> set[tuple[str, str]]:
        return {
            (m.in_flight, m.id)
            for m in held
            if m.id is not None and m.age_s is not None and m.age_s > older_than_s
        }

    suspects = old(first)
    if not suspects:
        return InFlight(lengths, older_than_s, window_s, (), unreadable)
    time.sleep(window_s)
    lengths, second = _held(target, lists)
    still = suspects & old(second)
    stuck = sorted(
        (m for m in second if m.id is not None and (m.in_flight, m.id) in still),
        key=lambda m: -(m.age_s or 0.0),
    )
    return InFlight(lengths, older_than_s, window_s, tuple(stuck), unreadable)
