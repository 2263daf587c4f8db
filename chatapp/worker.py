"""The reference queue worker: moves messages from Redis into the messages table.

    python -m chatapp.worker --config DIR/app.json [--name NAME|@host] [--ready-file PATH]
    python -m chatapp.worker process-dlq --config DIR/app.json

Reliable queue: a message is BLMOVEd from message_queue (right) to the worker's own processing
list (left), stored (INSERT ... ON CONFLICT (id) DO NOTHING, so a redelivery never duplicates),
its id pushed onto processed_messages, and only then removed from processing. A message that can
never be stored goes, raw, to dead_letter_queue. At start, whatever a previous run of the same
worker left in its processing list goes back to message_queue. If the database is down, the
message goes back to the queue and the worker waits.

Several workers may run side by side, each with its own --name: worker `worker` keeps the
runbook's message_queue:processing, worker `worker-2` uses message_queue:processing:worker-2, and
so on. A worker recovers only its own list, so a worker that starts never takes the messages
another live worker holds in flight (they would be delivered twice). Replicas of one compose
service run the same command line, so they take `--name @host`: the host's name, which is the
container's own id. A replica that crashes is restarted in the same container and recovers its
list; one that is stopped has nothing in flight (a message leaves processing before the next).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
import redis

from chatapp.config import (
    DEAD_LETTER,
    PENDING,
    PROCESSED,
    PROCESSING,
    AppConfig,
    setup_logging,
)

BLOCK_S = 1
RETRY_PAUSE_S = 1.0
FIRST_WORKER = "worker"


def processing_list(name: str) -> str:
    """The in-flight list of the worker called `name`."""
    return PROCESSING if name == FIRST_WORKER else f"{PROCESSING}:{name}"


def requeue_in_flight(client: redis.Redis, name: str) -> int:
    """Move what worker `name` holds in flight back to message_queue (oldest first).

    Only for a worker that is not running: its own start, or after it was stopped for good.
    """
    moved = 0
    while client.lmove(processing_list(name), PENDING, "LEFT", "RIGHT") is not None:
        moved += 1
    return moved


def worker_name(given: str) -> str:
    """The name a worker runs under: as given, or `@host` for the host's (container's) name."""
    return socket.gethostname() if given == "@host" else given


class PoisonMessage(Exception):
    """A message that can never be processed: it goes to the dead-letter queue."""


@dataclass(frozen=True)
class Message:
    id: uuid.UUID
    conversation_id: uuid.UUID
    user_id: str
    role: str
    content: str
    enqueued_at: float

    @classmethod
    def parse(cls, raw: str) -> Message:
        try:
            data = json.loads(raw)
        except ValueError:
            raise PoisonMessage("not JSON") from None
        if not isinstance(data, dict):
            raise PoisonMessage("not a JSON object")
        missing = [k for k in ("id", "conversation_id", "user_id", "content") if k not in data]
        if missing:
            raise PoisonMessage(f"missing fields: {', '.join(missing)}")
        try:
            message_id = uuid.UUID(str(data["id"]))
            conversation_id = uuid.UUID(str(data["conversation_id"]))
        except ValueError:
            raise PoisonMessage("id or conversation_id is not a UUID") from None
        enqueued_at = data.get("enqueued_at", time.time())
        if not isinstance(enqueued_at, int | float) or isinstance(enqueued_at, bool):
            raise PoisonMessage("enqueued_at is not a number")
        return cls(
            id=message_id,
            conversation_id=conversation_id,
            user_id=str(data["user_id"]),
            role=str(data.get("role") or "user"),
            content=str(data["content"]),
            enqueued_at=float(enqueued_at),
        )


class Worker:
    def __init__(self, config: AppConfig, name: str = FIRST_WORKER) -> None:
        self.config = config
        self.name = name
        self.processing = processing_list(name)
        self.log = logging.getLogger(name)
        # Longer than the BLMOVE block, so that an empty queue is not a socket timeout.
        self.redis = config.redis_client(timeout_s=BLOCK_S + 4)
        self.db: psycopg.Connection[tuple[Any, ...]] | None = None
        self.stopping = False
        self.recovered = False

    def _database(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self.db is None or self.db.closed or self.db.broken:
            self.db = self.config.connect_db("worker")
            self.db.autocommit = True
        return self.db

    def recover(self) -> int:
        """Move what a previous run left in processing back to the queue (oldest first)."""
        moved = requeue_in_flight(self.redis, self.name)
        if moved:
            self.log.info("recovered %d in-flight messages from %s", moved, self.processing)
        self.recovered = True
        return moved

    def store(self, message: Message) -> None:
        try:
            self._database().execute(
                'INSERT INTO messages (id, conversation_id, role, content, "timestamp")'
                " VALUES (%s, %s, %s, %s, to_timestamp(%s)) ON CONFLICT (id) DO NOTHING",
                (message.id, message.conversation_id, message.role, message.content,
                 message.enqueued_at),
            )  # fmt: skip
        except (psycopg.errors.IntegrityError, psycopg.errors.DataError) as exc:
            raise PoisonMessage(str(exc).strip().splitlines()[0]) from None

    def handle(self, raw: str) -> None:
        try:
            message = Message.parse(raw)
            self.store(message)
        except PoisonMessage as exc:
            self.log.error("dead letter (%s): moved to %s", exc, DEAD_LETTER)
            self.redis.lpush(DEAD_LETTER, raw)
            self.redis.lrem(self.processing, 1, raw)
            return
        except psycopg.Error as exc:
            self.log.error("database unavailable, message returned to %s: %s", PENDING, exc)
            self.db = None
            # Back to the consuming end, then out of processing: at worst it is delivered twice.
            self.redis.rpush(PENDING, raw)
            self.redis.lrem(self.processing, 1, raw)
            time.sleep(RETRY_PAUSE_S)
            return
        self.redis.lpush(PROCESSED, str(message.id))
        self.redis.lrem(self.processing, 1, raw)
        self.log.info("stored message %s", message.id)

    def run(self, ready_file: Path | None) -> None:
        try:
            self.recover()
        except redis.RedisError as exc:
            self.log.error("cannot recover in-flight messages yet: %s", exc)
        if ready_file is not None:
            ready_file.write_text("ready\n", encoding="ascii")
        self.log.info("worker started")
        while not self.stopping:
            try:
                if not self.recovered:
                    self.recover()
                raw = self.redis.blmove(PENDING, self.processing, BLOCK_S, "RIGHT", "LEFT")
                if raw is not None:
                    self.handle(str(raw))
            except redis.RedisError as exc:
                self.log.error("redis unavailable: %s", exc)
                time.sleep(RETRY_PAUSE_S)
        if self.db is not None:
            self.db.close()
        self.log.info("worker stopped")

    def stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True


def process_dead_letters(config: AppConfig) -> int:
    """Move every dead letter back to message_queue, one atomic LMOVE per message."""
    client = config.redis_client()
    count = 0
    # Bounded by the length seen now, so letters that fail again are not looped forever.
    for _ in range(int(client.llen(DEAD_LETTER))):
        if client.lmove(DEAD_LETTER, PENDING, "RIGHT", "LEFT") is None:
            break
        count += 1
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description="The reference queue worker.")
    parser.add_argument("command", nargs="?", choices=["run", "process-dlq"], default="run")
    parser.add_argument("--config", type=Path, required=True, help="path to app.json")
    parser.add_argument("--ready-file", type=Path, help="written once the worker is running")
    parser.add_argument(
        "--name",
        default=FIRST_WORKER,
        help="this worker's name, unique among those running; @host for the host's name",
    )
    args = parser.parse_args()
    setup_logging()
    config = AppConfig.load(args.config)
    if args.command == "process-dlq":
        try:
            moved = process_dead_letters(config)
        except redis.RedisError as exc:
            print(f"process-dlq: redis: {exc}")
            return 1
        print(f"moved {moved} dead letters from {DEAD_LETTER} to {PENDING}")
        return 0
    worker = Worker(config, worker_name(args.name))
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, worker.stop)
    worker.run(args.ready_file)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
