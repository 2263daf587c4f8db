"""Reports never copy a message's content or its user's id (issue 17).

The queue checks run, with their fixes planned, against the real sandbox, whose lists hold
messages that carry a recognisable content string and user id in every place a queue check
looks: message_queue (a backlog whose oldest message is past the age limit and that nothing
takes), dead_letter_queue (letters in JSON and text that is not JSON) and the in-flight list of
a consumer that is gone. Every one of those checks fails and attaches its evidence; neither
string may appear in the run's findings.json, junit.xml or report.html, while the messages'
ids do (so the evidence is really there).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import pytest
import redis
from support import RunChecks

from opsbook.sandbox.stack import Stack

pytestmark = pytest.mark.sandbox

PENDING = "message_queue"
PROCESSING = "message_queue:processing"
DEAD_LETTER = "dead_letter_queue"
REPORTS = ("findings.json", "junit.xml", "report.html")


def message(content: str, user_id: str, enqueued_at: float) -> tuple[str, str]:
    """A queued message as the backend writes it, and its id."""
    message_id = str(uuid.uuid4())
    raw = json.dumps(
        {
            "id": message_id, "conversation_id": str(uuid.uuid4()), "user_id": user_id,
            "role": "user", "content": content, "enqueued_at": enqueued_at,
        }
    )  # fmt: skip
    return raw, message_id


def run_folder(output: str, reports: Path) -> Path:
    printed = re.search(r"opsbook report: (\S+)/report\.html", output)
    return Path(printed[1]) if printed else reports / "latest"


@pytest.mark.breaks("QUEUE-003", "QUEUE-004", "QUEUE-005", "QUEUE-007", "QUEUE-008")
def test_queue_reports_show_ids_ages_and_sizes_never_content_or_user_ids(
    breakable_sandbox: Stack, admin_redis: redis.Redis, run_checks: RunChecks, tmp_path: Path
) -> None:
    content = f"private-content-{uuid.uuid4().hex}"
    user_id = f"private-user-{uuid.uuid4().hex}"
    long_ago = time.time() - 900
    pending = [message(content, user_id, long_ago + i) for i in range(3)]
    letters = [message(content, user_id, long_ago)[0], f"not JSON: {content} from {user_id}"]
    stuck, stuck_id = message(content, user_id, long_ago)
    dead_consumer = f"{PROCESSING}:worker-9"
    breakable_sandbox.stop("worker")
    try:
        admin_redis.delete(DEAD_LETTER)
        admin_redis.lpush(PENDING, *(raw for raw, _ in pending))
        admin_redis.lpush(DEAD_LETTER, *letters)
        admin_redis.lpush(dead_consumer, stuck)
        time.sleep(1.1)  # nothing has been stored for longer than QUEUE-007's 1 s window
        limits = {
            "OPSBOOK__THRESHOLDS__QUEUE_BACKLOG": "2",
            "OPSBOOK__THRESHOLDS__DEAD_LETTER_MAX": "1",
            "OPSBOOK__THRESHOLDS__PROCESSED_WINDOW_S": "1",
        }
        reports = tmp_path / "reports"
        run = run_checks("-m", "queue", "--remediate=plan", env=limits, reports=reports)
    finally:
        admin_redis.delete(PENDING, DEAD_LETTER, dead_consumer)
        breakable_sandbox.start("worker")
    assert run.exit_code == 1, run.output
    evidence = {}
    for check_id in ("QUEUE-003", "QUEUE-004", "QUEUE-005", "QUEUE-007", "QUEUE-008"):
        (row,) = [r for r in run.rows if r["check_id"] == check_id]
        assert row["outcome"] == "failed", (check_id, run.output)
        assert row["evidence"], (check_id, row)
        evidence[check_id] = row["evidence"]
    # The messages are named: the oldest waiting one and the stuck one by id, the letter that
    # is not JSON by its size.
    oldest_id = pending[0][1]
    assert oldest_id in evidence["QUEUE-005"]["oldest message"]
    assert stuck_id in evidence["QUEUE-008"]["stuck in flight"]
    shown = json.loads(evidence["QUEUE-004"]["newest dead letters"])
    assert shown[0]["size_bytes"] == len(letters[-1].encode())

    folder = run_folder(run.output, reports)
    for name in REPORTS:
        text = (folder / name).read_text(encoding="utf-8")
        assert oldest_id in text, f"{name} shows no evidence at all"
        for private in (content, user_id):
            assert private not in text, f"{name} copies {private!r}"
    for private in (content, user_id):
        assert private not in run.output
