"""Whether a service answers: an HTTP health answer with its timing, Redis PING, SELECT 1.

Checks ask the run's targets (one connection per run, its failure cached); a fix deciding
whether there is anything to do, or whether its restart worked, asks `answers_now` with a
target of its own, so that it sees the service as it is now and not as the run first saw it.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import Struct

from opsbook.errors import TargetUnreachable
from opsbook.targets import HttpTarget, PostgresTarget, RedisTarget

Target = HttpTarget | PostgresTarget | RedisTarget


class HealthAnswer(Struct, frozen=True):
    """The answer to GET health_path."""

    status_code: int
    elapsed_s: float
    text: str
    headers: dict[str, str]

    def field(self, name: str) -> object:
        """A top-level field of a JSON answer (Grafana's "database"); None if there is none."""
        try:
            document: Any = msgspec.json.decode(self.text)
        except msgspec.DecodeError:
            return None
        return document.get(name) if isinstance(document, dict) else None


class Reply(Struct, frozen=True):
    """Whether a server answered as a healthy one does, and if not, why."""

    answered: bool
    reason: str = ""


def http_health(target: HttpTarget) -> HealthAnswer:
    """The answer to GET health_path (asked once per run); TargetUnreachable without one."""
    response = target.health()
    return HealthAnswer(
        status_code=response.status_code,
        elapsed_s=response.elapsed.total_seconds(),
        text=response.text,
        headers=dict(response.headers.items()),
    )


def redis_ping(target: RedisTarget) -> Reply:
    """PING (the client is made with one, and asks once more): PONG, or why not."""
    import redis

    try:
        target.client().ping()
    except TargetUnreachable as exc:
        return Reply(False, exc.reason)
    except redis.RedisError as exc:
        return Reply(False, str(exc))
    return Reply(True)


def postgres_select_one(target: PostgresTarget) -> Reply:
    """SELECT 1 as the inventory's role: 1, or why not."""
    try:
        rows = target.query("SELECT 1")
    except TargetUnreachable as exc:
        return Reply(False, exc.reason)
    if rows != [(1,)]:
        return Reply(False, f"SELECT 1 returned {rows!r}")
    return Reply(True)


def answers_now(target: Target) -> bool:
    """Whether a target made for this question answers as a healthy one does (HTTP 200, PONG,
    SELECT 1); its connection is closed afterwards."""
    try:
        if isinstance(target, HttpTarget):
            return http_health(target).status_code == 200
        if isinstance(target, PostgresTarget):
            return postgres_select_one(target).answered
        return redis_ping(target).answered
    except TargetUnreachable:
        return False
    finally:
        target.close()


class ApiAnswer(Struct, frozen=True):
    """One GET of the backend's API: status, media type and body (the body cut short)."""

    status_code: int
    media_type: str
    body: str

    def shown(self) -> str:
        return f"{self.status_code} {self.media_type or 'no type'}"


BODY_CHARS = 500


def api_answer(target: HttpTarget, path: str) -> ApiAnswer:
    """GET `path` of `target` (TargetUnreachable without an answer)."""
    response = target.get(path)
    media = response.headers.get("Content-Type", "").split(";", 1)[0].strip()
    return ApiAnswer(response.status_code, media, response.text[:BODY_CHARS])
