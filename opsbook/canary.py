"""The end-to-end canary and the readiness wait of the deploy gates.

The canary posts one message through the frontend (nginx) and follows it: backend (202) ->
message_queue -> worker -> PostgreSQL (the row) -> processed_messages -> back out through the
API (GET /api/messages/<id>), timing each hop. Afterwards it deletes what it made, as the
admins: its message and conversation rows, its processed_messages entry, and the message itself
if it is still queued. Everything uses connections of its own, with timeouts.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from msgspec import Struct, field

from opsbook.inventory import HttpEndpoint, Inventory, Postgres, Redis
from opsbook.probes.queue import further_in_flight
from opsbook.waiting import until

POLL_S = 0.1
CANARY_USER = "opsbook-canary"


class Readiness(Struct):
    """What waiting for the stack found: how long it took, and what was still not ready."""

    ready: bool
    waited_s: float
    not_ready: dict[str, str] = field(default_factory=dict)


def _get(spec: HttpEndpoint, path: str, timeout: float) -> tuple[int | None, str]:
    """GET `path` of the endpoint: its status and "GET path STATUS", or None and why not."""
    import requests

    auth = (spec.user, spec.password.reveal()) if spec.user and spec.password else None
    try:
        response = requests.get(spec.url + path, timeout=timeout, auth=auth, verify=spec.verify)
    except requests.RequestException as exc:
        return None, f"GET {path}: {type(exc).__name__}"
    return response.status_code, f"GET {path} {response.status_code}"


def _http_problem(spec: HttpEndpoint, timeout: float) -> str | None:
    status, shown = _get(spec, spec.health_path, timeout)
    return None if status == 200 else shown


def _api_problem(spec: HttpEndpoint, path: str, timeout: float) -> str | None:
    """A proxy that answers 502 or 504 on its API path (it still holds a replaced backend's
    address, or the backend is not listening yet) is not ready, whatever its /health says."""
    status, shown = _get(spec, path, timeout)
    return shown if status in (None, 502, 504) else None


def monitor_connection(spec: Postgres, timeout: float) -> Any:
    import psycopg

    return psycopg.connect(
        host=spec.host, port=spec.port, dbname=spec.database, user=spec.user,
        password=spec.password.reveal() if spec.password else None, sslmode=spec.sslmode,
        connect_timeout=max(2, round(timeout)), application_name="opsbook-canary",
        autocommit=True,
    )  # fmt: skip


def admin_connection(spec: Postgres, timeout: float) -> Any:
    import psycopg

    if spec.admin is None:
        raise PermissionError("postgres has no admin credentials in the inventory")
    password = spec.admin.password.resolve().reveal() if spec.admin.password else None
    return psycopg.connect(
        host=spec.host, port=spec.port, dbname=spec.database, user=spec.admin.user,
        password=password, sslmode=spec.sslmode, connect_timeout=max(2, round(timeout)),
        application_name="opsbook-canary", autocommit=True,
    )  # fmt: skip


def checker_client(spec: Redis, timeout: float) -> Any:
    import redis

    return redis.Redis.from_url(
        spec.url, password=spec.password.reveal() if spec.password else None,
        socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True,
    )  # fmt: skip


def admin_client(spec: Redis, timeout: float) -> Any:
    import redis

    if spec.admin is None:
        raise PermissionError("redis has no admin credentials in the inventory")
    url = urlsplit(spec.url)
    plain = url._replace(netloc=url.netloc.rpartition("@")[2]).geturl()
    return redis.Redis.from_url(
        plain, username=spec.admin.user,
        password=spec.admin.password.resolve().reveal() if spec.admin.password else None,
        socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True,
    )  # fmt: skip


def _postgres_problem(spec: Postgres, timeout: float) -> str | None:
    try:
        with monitor_connection(spec, timeout) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return f"SELECT 1: {type(exc).__name__}"
    return None


def _redis_problem(spec: Redis, timeout: float) -> str | None:
    client = checker_client(spec, timeout)
    try:
        client.ping()
    except Exception as exc:
        return f"PING: {type(exc).__name__}"
    finally:
        client.close()
    return None


def wait_ready(inventory: Inventory, deadline_s: float) -> Readiness:
    """Poll every HTTP /health, PostgreSQL and Redis of the inventory, and each proxy's API path
    (neither 502 nor 504), until all answer, or the deadline passes: a gate right after a deploy
    must not fail on a service still starting or a proxy still holding the old address."""
    timeout = inventory.thresholds.timeout_s
    probes: dict[str, Callable[[], str | None]] = {}
    for name, endpoint in inventory.http.items():
        probes[f"http {name}"] = partial(_http_problem, endpoint, timeout)
        if endpoint.api_path is not None:
            probes[f"http {name} passing the API on"] = partial(
                _api_problem, endpoint, endpoint.api_path, timeout
            )
    for name, spec in inventory.postgres.items():
        probes[f"postgres {name}"] = partial(_postgres_problem, spec, timeout)
    for name, redis_spec in inventory.redis.items():
        probes[f"redis {name}"] = partial(_redis_problem, redis_spec, timeout)
    began = time.monotonic()
    pending = dict(probes)
    problems: dict[str, str] = {}
    while True:
        for what, probe in list(pending.items()):
            problem = probe()
            if problem is None:
                del pending[what]
                problems.pop(what, None)
            else:
                problems[what] = problem
        waited = time.monotonic() - began
        if not pending:
            return Readiness(True, waited)
        if waited >= deadline_s:
            return Readiness(False, waited, problems)
        time.sleep(0.5)


class CanaryResult(Struct):
    message_id: str | None = None
    hops_ms: dict[str, float] = field(default_factory=dict)
    failed_hop: str | None = None
    problem: str = ""
    cleanup: list[str] = field(default_factory=list)  # what was deleted, or why it could not be


# How far into a list the canary looks for its message: it was pushed at the left end moments
# ago, so only a queue this busy could have pushed it further.
SEARCHED = 10_000


def _whereabouts(spec: Redis, message_id: str, timeout: float) -> tuple[str, str | None]:
    """Where a message that was not stored is, in words, and the in-flight list holding it:
    still queued (no consumer took it), held by a consumer, dead-lettered, or none of them."""
    queues = spec.queues
    client = checker_client(spec, timeout)

    def holds(name: str) -> bool:
        return any(message_id in raw for raw in client.lrange(name, 0, SEARCHED - 1))

    try:
        if holds(queues.pending):
            return f"still in {queues.pending}: no consumer took it", None
        pattern = further_in_flight(queues)
        lists = [queues.in_flight, *client.scan_iter(match=pattern, count=1000, _type="list")]
        for name in map(str, lists):
            if holds(name):
                return f"taken by a consumer, held in {name} and not stored", name
        if holds(queues.dead_letter):
            return f"in {queues.dead_letter}: the consumer could not store it", None
        return f"in neither {queues.pending}, an in-flight list nor {queues.dead_letter}", None
    except Exception as exc:
        return f"where it is unknown (Redis: {type(exc).__name__})", None
    finally:
        client.close()


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def run_canary(inventory: Inventory, hop_deadline_s: float) -> CanaryResult:
    """Send one canary message end to end; each hop must complete within hop_deadline_s."""
    import requests

    result = CanaryResult()
    front = inventory.endpoints("frontend") or inventory.endpoints("backend")
    if not front or not inventory.postgres or not inventory.redis:
        result.failed_hop, result.problem = "setup", "needs a frontend, a PostgreSQL and a Redis"
        return result
    endpoint = next(iter(front.values()))
    pg_spec = next(iter(inventory.postgres.values()))
    redis_spec = next(iter(inventory.redis.values()))
    timeout = inventory.thresholds.timeout_s
    content = f"opsbook canary {uuid.uuid4()}"
    conversation = str(uuid.uuid4())
    held_in = None  # the in-flight list of a consumer that took the message and did not store it
    began = time.monotonic()
    try:
        try:
            answer = requests.post(
                endpoint.url + "/api/messages",
                json={"content": content, "user_id": CANARY_USER, "conversation_id": conversation},
                timeout=timeout,
                verify=endpoint.verify,
            )
        except requests.RequestException as exc:
            result.failed_hop, result.problem = "post", f"POST /api/messages: {type(exc).__name__}"
            return result
        result.hops_ms["post"] = _ms(time.monotonic() - began)
        if answer.status_code != 202:
            result.failed_hop = "post"
            result.problem = f"POST /api/messages answered {answer.status_code} (expected 202)"
            return result
        result.message_id = str(answer.json()["id"])
        with monitor_connection(pg_spec, timeout) as conn:
            mark = time.monotonic()

            def stored() -> bool:
                row = conn.execute("SELECT 1 FROM messages WHERE id = %s", (result.message_id,))
                return row.fetchone() is not None

            if not until(stored, hop_deadline_s, POLL_S):
                where, held_in = _whereabouts(redis_spec, result.message_id, timeout)
                result.failed_hop = "stored"
                result.problem = (
                    f"message {result.message_id} not in PostgreSQL after {hop_deadline_s:g} s: "
                    + where
                )
                return result
            result.hops_ms["stored"] = _ms(time.monotonic() - mark)
        checker = checker_client(redis_spec, timeout)
        try:
            mark = time.monotonic()
            processed = redis_spec.queues.processed
            if not until(lambda: checker.lpos(processed, result.message_id) is not None,
                          hop_deadline_s, POLL_S):  # fmt: skip
                result.failed_hop = "processed"
                result.problem = (
                    f"{result.message_id} not in {processed} after {hop_deadline_s:g} s"
                )
                return result
            result.hops_ms["processed"] = _ms(time.monotonic() - mark)
        finally:
            checker.close()
        mark = time.monotonic()
        try:
            back = requests.get(
                f"{endpoint.url}/api/messages/{result.message_id}",
                timeout=timeout, verify=endpoint.verify,
            )  # fmt: skip
        except requests.RequestException as exc:
            result.failed_hop, result.problem = (
                "read",
                f"GET /api/messages/ID: {type(exc).__name__}",
            )
            return result
        result.hops_ms["read"] = _ms(time.monotonic() - mark)
        if back.status_code != 200 or content not in back.text:
            result.failed_hop = "read"
            result.problem = f"GET /api/messages/{result.message_id} answered {back.status_code}"
            return result
        result.hops_ms["total"] = _ms(time.monotonic() - began)
        return result
    finally:
        result.cleanup = cleanup(
            inventory, conversation, result.message_id, timeout, held_in=held_in
        )


def cleanup(
    inventory: Inventory,
    conversation: str,
    message_id: str | None,
    timeout: float,
    *,
    held_in: str | None = None,
) -> list[str]:
    """Delete the canary's queue entries and rows as the admins; what was done, or why not.

    A message still queued is taken off the queue first, so that no worker stores it after
    its conversation is gone (it would end as a dead letter). A message a consumer holds
    (`held_in`) is its to finish: its conversation is left, for the same reason."""
    if held_in is not None:
        return [
            f"left conversation {conversation} and its message: {held_in} holds the message, "
            "and its consumer stores it once it moves again (without the conversation, it "
            "would be a dead letter)"
        ]
    done = []
    pg_spec = next(iter(inventory.postgres.values()))
    redis_spec = next(iter(inventory.redis.values()))
    queues = redis_spec.queues
    client = None
    try:
        client = admin_client(redis_spec, timeout)
        removed = 0
        if message_id is not None:
            for raw in client.lrange(queues.pending, 0, -1):
                if message_id in raw:
                    removed += int(client.lrem(queues.pending, 0, raw))
    except Exception as exc:
        done.append(f"could not take the canary off {queues.pending}: {type(exc).__name__}: {exc}")
    try:
        with admin_connection(pg_spec, timeout) as conn:
            messages = conn.execute(
                "DELETE FROM messages WHERE conversation_id = %s", (conversation,)
            ).rowcount
            conversations = conn.execute(
                "DELETE FROM conversations WHERE id = %s AND user_id = %s",
                (conversation, CANARY_USER),
            ).rowcount
        done.append(f"deleted {messages} message and {conversations} conversation row(s)")
    except Exception as exc:
        done.append(f"could not delete the canary's rows: {type(exc).__name__}: {exc}")
    if client is not None and message_id is not None:
        try:
            removed += int(client.lrem(queues.processed, 0, message_id))
            done.append(f"removed {removed} queue entr{'y' if removed == 1 else 'ies'}")
        except Exception as exc:
            done.append(f"could not remove the canary from Redis: {type(exc).__name__}: {exc}")
    if client is not None:
        client.close()
    return done
