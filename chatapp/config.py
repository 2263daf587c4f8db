"""app.json, shared by the backend and the worker: where the database and Redis are.

The file names the password *files*; passwords are read at start and never logged.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

PENDING = "message_queue"
PROCESSING = "message_queue:processing"
DEAD_LETTER = "dead_letter_queue"
PROCESSED = "processed_messages"

DB_CONNECT_TIMEOUT_S = 2  # libpq's smallest effective connect_timeout
DB_STATEMENT_TIMEOUT_MS = 1000
REDIS_TIMEOUT_S = 1.0


def _read_secret(path: str) -> str:
    return Path(path).read_text(encoding="utf-8").strip()


@dataclass(frozen=True)
class AppConfig:
    listen_host: str
    listen_port: int
    db: dict[str, Any]
    redis_url: str
    redis_password: str
    # Like a framework's debug mode: /health then tells its version, DSN and errors. Off in
    # the sandbox; the tests turn it on to prove that check HEALTH-003 catches it.
    debug: bool = False

    @classmethod
    def load(cls, path: Path) -> AppConfig:
        raw = json.loads(path.read_text(encoding="utf-8"))
        database = dict(raw["database"])
        database["password"] = _read_secret(database.pop("password_file"))
        return cls(
            listen_host=raw["listen"]["host"],
            listen_port=int(raw["listen"]["port"]),
            db=database,
            redis_url=raw["redis"]["url"],
            redis_password=_read_secret(raw["redis"]["password_file"]),
            debug=bool(raw.get("debug", False)),
        )

    def connect_db(self, application: str) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(
            **self.db,
            connect_timeout=DB_CONNECT_TIMEOUT_S,
            options=f"-c statement_timeout={DB_STATEMENT_TIMEOUT_MS}",
            application_name=application,
        )

    def redis_client(self, timeout_s: float = REDIS_TIMEOUT_S) -> redis.Redis:
        parts = urlsplit(self.redis_url)
        return redis.Redis(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            db=int(parts.path.lstrip("/") or 0),
            username=parts.username,
            password=self.redis_password,
            socket_timeout=timeout_s,
            socket_connect_timeout=REDIS_TIMEOUT_S,
            decode_responses=True,
            # One attempt: a health check must answer within its timeout; callers retry.
            retry=Retry(NoBackoff(), 0),
        )


def setup_logging() -> None:
    """Timestamped lines on stderr (the sandbox sends stderr to DIR/logs/NAME.log)."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
