"""The reference chat backend: accepts messages, queues them, serves /health and /metrics.

    python -m chatapp.backend --config DIR/app.json

GET /health               200 {"status":"ok","database":"ok","redis":"ok"}, or 503 naming the part
POST /api/messages        {"content","user_id"[,"conversation_id","role"]}
                          -> 202 {"id","conversation_id"}, queued on message_queue
GET /api/messages/<id>    the stored message, or 404
GET /metrics              http_requests_total{handler,status}, queue_pending_messages

No response body carries versions, DSNs or stack traces; failures are logged with ERROR.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
import redis
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from chatapp.config import PENDING, AppConfig, setup_logging

MAX_BODY = 64 * 1024
log = logging.getLogger("backend")

# The `handler` label of http_requests_total: the route that answered, from a fixed set (a
# path with a message id in it would make a series per message), with the statuses each
# route answers. Every pair is exported from the start at 0, as prometheus_client advises
# for labels known in advance: the first 500 of an outage is then an increase Prometheus
# sees, where a series born at 1 would show none.
ROUTES = {
    "/api/messages": ("202", "400", "413", "500", "503"),
    "/api/messages/{id}": ("200", "404", "500", "503"),
    "/health": ("200", "500", "503"),
    "/metrics": ("200", "500"),
    "other": ("404", "501"),
}


class Backend:
    """The application behind the HTTP handler (one per process)."""

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        self.redis = config.redis_client()
        self.registry = CollectorRegistry()
        # process_resident_memory_bytes and friends, for the HighMemoryUsage alert.
        ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "http_requests", "HTTP requests answered, by route and status code",
            ["handler", "status"], registry=self.registry,
        )  # fmt: skip
        for handler, statuses in ROUTES.items():
            for status in statuses:
                self.requests.labels(handler=handler, status=status)
        pending = Gauge(
            "queue_pending_messages", "Messages waiting in message_queue (LLEN at scrape)",
            registry=self.registry,
        )  # fmt: skip
        pending.set_function(self._pending)

    def _pending(self) -> float:
        try:
            return float(self.redis.llen(PENDING))
        except redis.RedisError as exc:
            log.error("metrics: cannot read the queue length: %s", exc)
            return float("nan")

    def health(self) -> tuple[int, dict[str, str]]:
        parts = {"database": "ok", "redis": "ok"}
        try:
            with self.config.connect_db("backend-health") as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            log.error("health: database check failed: %s", str(exc).strip())
            parts["database"] = "error"
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            log.error("health: redis check failed: %s", exc)
            parts["redis"] = "error"
        healthy = all(v == "ok" for v in parts.values())
        body = {"status": "ok" if healthy else "error", **parts}
        if self.config.debug:
            db = self.config.db
            body["version"] = f"chat-backend/0.1.0 python/{sys.version.split()[0]}"
            body["database_url"] = (
                f"postgresql://{db['user']}@{db['host']}:{db['port']}/{db['dbname']}"
            )
        return (200 if healthy else 503), body

    def post_message(self, payload: object) -> tuple[int, dict[str, str]]:
        if not isinstance(payload, dict):
            return 400, {"error": "expected a JSON object"}
        content, user_id = payload.get("content"), payload.get("user_id")
        role = payload.get("role", "user")
        if not isinstance(content, str) or not content:
            return 400, {"error": "content must be a non-empty string"}
        if not isinstance(user_id, str) or not user_id:
            return 400, {"error": "user_id must be a non-empty string"}
        if not isinstance(role, str):
            return 400, {"error": "role must be a string"}
        try:
            conversation_id = str(uuid.UUID(str(payload.get("conversation_id") or uuid.uuid4())))
        except ValueError:
            return 400, {"error": "conversation_id must be a UUID"}
        message: dict[str, object] = {
            "id": str(uuid.uuid4()),
            "conversation_id": conversation_id,
            "user_id": user_id,
            "role": role,
            "content": content,
            "enqueued_at": time.time(),
        }
        try:
            with self.config.connect_db("backend") as conn:
                conn.execute(
                    "INSERT INTO conversations (id, user_id) VALUES (%s, %s)"
                    " ON CONFLICT (id) DO NOTHING",
                    (conversation_id, user_id),
                )
        except psycopg.Error as exc:
            log.error("post message: database: %s", str(exc).strip())
            return 503, {"error": "database unavailable"}
        try:
            self.redis.lpush(PENDING, json.dumps(message))
        except redis.RedisError as exc:
            log.error("post message: redis: %s", exc)
            return 503, {"error": "queue unavailable"}
        log.info("queued message %s in conversation %s", message["id"], conversation_id)
        return 202, {"id": str(message["id"]), "conversation_id": conversation_id}

    def get_message(self, message_id: str) -> tuple[int, dict[str, Any]]:
        try:
            key = uuid.UUID(message_id)
        except ValueError:
            return 404, {"error": "not found"}
        try:
            with self.config.connect_db("backend") as conn:
                row = conn.execute(
                    'SELECT id, conversation_id, role, content, "timestamp" FROM messages'
                    " WHERE id = %s",
                    (key,),
                ).fetchone()
        except psycopg.Error as exc:
            log.error("get message: database: %s", str(exc).strip())
            return 503, {"error": "database unavailable"}
        if row is None:
            return 404, {"error": "not found"}
        return 200, {
            "id": str(row[0]),
            "conversation_id": str(row[1]),
            "role": row[2],
            "content": row[3],
            "timestamp": row[4].isoformat(),
        }


class Handler(BaseHTTPRequestHandler):
    server_version = "chat-backend"
    sys_version = ""
    app: Backend  # set on the class by serve()
    handler = "other"  # the route answering this request (a key of ROUTES)

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.app.requests.labels(handler=self.handler, status=str(status)).inc()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, body: object) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The stdlib page would name the server; answer with plain JSON instead.
        self.close_connection = True
        self._json(code, {"error": HTTPStatus(code).phrase})

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        self.handler = (
            path if path in ("/health", "/metrics")
            else "/api/messages/{id}" if path.startswith("/api/messages/")
            else "other"
        )  # fmt: skip
        try:
            if path == "/health":
                self._json(*self.app.health())
            elif path == "/metrics":
                self._send(200, generate_latest(self.app.registry), CONTENT_TYPE_LATEST)
            elif path.startswith("/api/messages/"):
                self._json(*self.app.get_message(path.removeprefix("/api/messages/")))
            else:
                self._json(404, {"error": "not found"})
        except Exception:
            log.exception("GET %s", path)
            self._json(500, {"error": "internal error"})

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        self.handler = "/api/messages" if path == "/api/messages" else "other"
        if path != "/api/messages":
            self._json(404, {"error": "not found"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._json(400, {"error": "bad Content-Length"})
            return
        if length > MAX_BODY:
            self.close_connection = True
            self._json(413, {"error": "body too large"})
            return
        try:
            payload = json.loads(self.rfile.read(length) or b"null")
        except (ValueError, UnicodeDecodeError):
            self._json(400, {"error": "body is not valid JSON"})
            return
        try:
            self._json(*self.app.post_message(payload))
        except Exception:
            log.exception("POST %s", path)
            self._json(500, {"error": "internal error"})


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def serve(config: AppConfig) -> None:
    Handler.app = Backend(config)
    server = ThreadingHTTPServer((config.listen_host, config.listen_port), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, _stop)
    log.info("backend listening on %s:%d", config.listen_host, config.listen_port)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        log.info("backend stopped")


def main() -> None:
    parser = argparse.ArgumentParser(description="The reference chat backend.")
    parser.add_argument("--config", type=Path, required=True, help="path to app.json")
    args = parser.parse_args()
    setup_logging()
    serve(AppConfig.load(args.config))


if __name__ == "__main__":
    main()
