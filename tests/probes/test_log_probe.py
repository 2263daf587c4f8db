"""The log probe: a real log's tail read through the host, and lines as the sandbox's services
really write them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from opsbook.inventory import Host
from opsbook.probes.host import NotObserved
from opsbook.probes.logs import host_clock, log_lines, log_tail, recent_errors, timestamp
from opsbook.targets import HostTarget

PARIS = timezone(timedelta(hours=1))
NOW = datetime(2026, 11, 27, 12, 5, 0, tzinfo=UTC)
LOCAL = HostTarget("local", Host())


def test_the_tail_of_a_long_log_starts_mid_line(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    log.write_bytes(
        b"".join(b"2026-11-27 12:00:%02d,000 INFO line %d\n" % (i % 60, i) for i in range(100))
    )
    whole = log_tail(LOCAL, str(log), timeout_s=3)
    assert (whole.text, whole.cut) == (log.read_text(), False)
    tail = log_tail(LOCAL, str(log), timeout_s=3, max_bytes=100)
    assert (tail.text, tail.cut) == (log.read_text()[-100:], True)


def test_a_log_with_bytes_that_are_not_utf8_is_still_read(tmp_path: Path) -> None:
    log = tmp_path / "nginx.log"
    log.write_bytes(b"2026/11/27 12:04:00 [error] GET /\xff\xfe failed\n")
    assert log_tail(LOCAL, str(log), timeout_s=3).text == (
        "2026/11/27 12:04:00 [error] GET /\ufffd\ufffd failed\n"
    )


def test_a_missing_log_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(NotObserved) as raised:
        log_tail(LOCAL, str(tmp_path / "gone.log"), timeout_s=3)
    assert raised.value.reason == "cannot read: No such file or directory"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # The backend and the worker (Python logging's asctime, local time).
        ("2026-11-27 12:00:00,406 ERROR worker: dead letter", "12:00:00.406+01:00"),
        # nginx error.log (local time).
        ("2026/11/27 12:00:00 [error] 9#9: *1 connect() failed", "12:00:00+01:00"),
        # ISO 8601 with its own zone, bare or as a logfmt field (Prometheus).
        ("2026-11-27T12:00:00.5Z level=error msg=x", "12:00:00.5+00:00"),
        ("ts=2026-11-27T12:00:00.821Z caller=main.go:1012", "12:00:00.821+00:00"),
        ("2026-11-27T13:00:00+01:00 failed", "12:00:00+00:00"),
        ("2026-11-27T07:00:00-0500 failed", "12:00:00+00:00"),
        ("[2026-11-27 12:00:00.123456789 UTC] x", "12:00:00.123456+00:00"),
    ],
)
def test_timestamp_reads_the_formats_of_the_logs(line: str, expected: str) -> None:
    found = timestamp(line, PARIS)
    assert found is not None
    assert found[0] == datetime.fromisoformat(f"2026-11-27T{expected}")


@pytest.mark.parametrize(
    "line",
    [
        "Traceback (most recent call last):",
        '  File "/app/backend.py", line 12, in handle',
        "2026-13-45 12:00:00,000 ERROR not a date",
        "12:00:00 ERROR no date",
        "",
    ],
)
def test_timestamp_is_none_without_a_date_and_time(line: str) -> None:
    assert timestamp(line, UTC) is None


def test_host_clock_keeps_the_hosts_offset() -> None:
    now = host_clock("1796126400 +0100\n")
    assert now == datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert now.utcoffset() == timedelta(hours=1)


@pytest.mark.parametrize("output", ["", "Fri Nov 27 12:00:00 UTC 2026", "1796126400 CET"])
def test_host_clock_rejects_other_output(output: str) -> None:
    with pytest.raises(ValueError, match=r"date|offset"):
        host_clock(output)


def test_an_error_in_the_window_is_found() -> None:
    log = (
        "2026-11-27 11:59:00,000 ERROR worker: too old\n"
        "2026-11-27 12:01:00,000 INFO worker: stored message 1\n"
        "2026-11-27 12:04:00,000 ERROR worker: dead letter (not JSON): moved to dead_letter_queue\n"
    )
    assert recent_errors(log, NOW, 300) == [
        "2026-11-27 12:04:00,000 ERROR worker: dead letter (not JSON): moved to dead_letter_queue"
    ]
    assert recent_errors(log, NOW, 30) == []


def test_zone_less_timestamps_are_in_the_hosts_zone() -> None:
    log = "2026/11/27 12:04:00 [error] 9#9: *7 connect() failed (111: Connection refused)\n"
    assert recent_errors(log, NOW, 300) == [log.strip()]
    # On a host one hour east of UTC, 12:04 is 11:04 UTC: an hour before the window.
    assert recent_errors(log, NOW.astimezone(PARIS), 300) == []
    assert recent_errors(log.replace("12:04", "13:04"), NOW.astimezone(PARIS), 300) != []


def test_a_line_from_the_future_counts_as_recent() -> None:
    log = "2026-11-27T12:09:00Z level=error msg=boom\n"
    assert recent_errors(log, NOW, 60) == [log.strip()]


def test_traceback_lines_belong_to_the_line_above() -> None:
    log = (
        "2026-11-27 11:00:00,000 ERROR backend: GET /old\n"
        "psycopg.OperationalError: connection failed\n"
        "2026-11-27 12:04:30,000 ERROR backend: GET /api/messages\n"
        "Traceback (most recent call last):\n"
        "redis.exceptions.ConnectionError: Error 111 connecting to 127.0.0.1:6379.\n"
    )
    assert recent_errors(log, NOW, 300) == [
        "2026-11-27 12:04:30,000 ERROR backend: GET /api/messages",
        "redis.exceptions.ConnectionError: Error 111 connecting to 127.0.0.1:6379.",
    ]
    times = [line.written for line in log_lines(log, UTC)]
    assert times[1] == times[0]
    assert times[3] == times[4] == datetime(2026, 11, 27, 12, 4, 30, tzinfo=UTC)


def test_lines_before_the_first_timestamp_have_no_time() -> None:
    log = "Error 111 connecting\n2026-11-27 12:04:00,000 INFO worker: worker started\n"
    assert log_lines(log, UTC)[0].written is None
    assert recent_errors(log, NOW, 300) == []


def test_the_cut_first_line_of_a_tail_is_dropped() -> None:
    log = "l: failed to connect\n2026-11-27 12:04:00,000 ERROR worker: redis unavailable\n"
    assert len(log_lines(log, UTC, starts_mid_line=True)) == 1
    # A fragment that looks stamped is not trusted either: it may be the end of any line.
    stamped = "2026-11-27 12:04:00,000 ERROR cut\n2026-11-27 12:04:01,000 INFO ok\n"
    assert recent_errors(stamped, NOW, 300, starts_mid_line=True) == []


@pytest.mark.parametrize(
    ("message", "is_error"),
    [
        ("ERROR worker: dead letter", True),
        ("WARNING backend: Exception in handler", True),
        ("CRITICAL backend: out of memory", True),
        ("[crit] 9#9: *1 open() failed (13: Permission denied)", True),
        ("[emerg] 9#9: bind() to 0.0.0.0:80", True),
        ("[alert] 9#9: worker process 12 exited on signal 9", True),
        ("WARNING worker: panic: runtime error", True),
        ("level=error msg=x", True),
        ("WARNING backend: 0 errors, errorless, on_error, error_log", False),
        ("WARNING backend: OperationalError retried", False),
        # The service itself says these are not errors.
        ('INFO backend: 127.0.0.1 "GET /api/failed HTTP/1.1" 404 -', False),
        ("[info] 9#9: *3 recv() failed (104: Connection reset by peer)", False),
        ("[notice] 9#9: signal process failed", False),
        ('level=info msg="scrape failed"', False),
        ("DEBUG worker: fatal-looking but debug", False),
    ],
)
def test_which_lines_are_errors(message: str, is_error: bool) -> None:
    line = f"2026-11-27 12:04:00,000 {message}"
    assert recent_errors(line, NOW, 300) == ([line] if is_error else [])


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="offset"):
        recent_errors("", NOW.replace(tzinfo=None), 300)
