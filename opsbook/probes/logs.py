"""A service log's tail, read through the host, and which of its lines are errors, and when.

`log_tail` and `clock` read a log's tail and the host's clock through the host's testinfra
backend (under `timeout`); the rest are pure functions over their text. LOG-001, the log
audit (SEC-050) and `opsbook incident collect` read logs this one way.

A timestamp is read at the start of a line (optionally after `[`, `ts=` or `time=`):

    2026-11-27 12:00:00,123    Python logging: the backend and the worker
    2026/11/27 12:00:00        nginx error.log
    2026-11-27T12:00:00.123Z   ISO 8601, with Z, +01:00, +0100, UTC or no zone

A timestamp without a zone is the host's local time, as the services write it. A line without
a timestamp belongs to the timestamped line above it (the lines of a traceback). Lines before
the first timestamp of the text have no known time and are left out: nobody can say whether
they fall in the window.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING

from msgspec import Struct

from opsbook.probes.host import NotObserved, run

if TYPE_CHECKING:
    from opsbook.targets import HostTarget

# Only the tail is read: a log of gigabytes must not be copied over SSH every day. 256 KiB holds
# thousands of lines, more than a healthy service writes in a check's window.
TAIL_BYTES = 256 * 1024

# The words of the runbook's `grep -iE`; nginx's three levels above "error" name none of them.
ERROR = re.compile(
    r"\b(?:error|exception|failed|fatal|panic|critical)\b|\[(?:crit|alert|emerg)\]", re.I
)
# ERROR's word boundaries and case folding cost about 7 µs a line: this finds its words in a
# lowered line in a seventh of that, so ERROR itself runs only on the few lines that have one.
_ERROR_WORDS = re.compile(
    r"error|exception|failed|fatal|panic|critical|\[crit\]|\[alert\]|\[emerg\]"
)
# A line whose own level is below warning is not an error, whatever its words: nginx logs
# "[info] ... recv() failed (104: Connection reset by peer)" for every client that hangs up.
_QUIET = re.compile(r"^\W*(?:debug|info|notice)\b|\blevel=(?:debug|info)\b", re.I)
_TIMESTAMP = re.compile(
    r"^\[?(?:ts=|time=)?"
    r"(?P<year>\d{4})(?P<sep>[-/])(?P<month>\d{2})(?P=sep)(?P<day>\d{2})"
    r"[T ](?P<hour>\d{2}):(?P<minute>\d{2}):(?P<second>\d{2})"
    r"(?:[.,](?P<fraction>\d+))?"
    r"(?:\s?(?P<zone>Z|UTC|[+-]\d{2}:?\d{2})\b)?"
)


class LogLine(Struct, frozen=True):
    """One line of a log, with the time of the entry it belongs to."""

    text: str
    written: datetime | None  # None: before the first timestamp of the text
    quiet: bool  # its entry says debug, info or notice


def host_clock(date_output: str) -> datetime:
    """The host's current time, in its own UTC offset, from the output of `date '+%s %z'`."""
    fields = date_output.split()
    if len(fields) != 2 or not re.fullmatch(r"-?\d+", fields[0]):
        raise ValueError(f"not the output of date '+%s %z': {date_output.strip()[:80]!r}")
    return datetime.fromtimestamp(int(fields[0]), tz=_zone(fields[1]))


def clock(host: HostTarget, *, timeout_s: float) -> datetime:
    """The host's current time, in its own UTC offset (its logs are written in its zone)."""
    answer = run(host, "clock", "date '+%%s %%z'", timeout_s=timeout_s)
    if answer.rc != 0:
        raise NotObserved(host, "clock", f"date failed: {answer.why()}")
    try:
        return host_clock(answer.stdout)
    except ValueError as exc:
        raise NotObserved(host, "clock", str(exc)) from None


class LogTail(Struct, frozen=True):
    """The last bytes of a log."""

    path: str
    data: bytes
    # The log is longer than what was read, so the first line is a fragment of a longer one.
    cut: bool

    @property
    def text(self) -> str:
        """The tail decoded as UTF-8, undecodable bytes replaced."""
        return self.data.decode("utf-8", errors="replace")


def log_tail(
    host: HostTarget, path: str, *, timeout_s: float, max_bytes: int = TAIL_BYTES
) -> LogTail:
    """The last `max_bytes` of the log at `path` on the host.

    Raises NotObserved when the host cannot give it: no answer within `timeout_s`, or the
    reason `tail` gives ("No such file or directory", "Permission denied").
    """
    answer = run(host, path, "tail -c %s -- %s", str(max_bytes), path, timeout_s=timeout_s)
    if answer.rc != 0:
        raise NotObserved(host, path, f"cannot read: {answer.why()}")
    data = answer.stdout_bytes
    return LogTail(path, data, cut=len(data) >= max_bytes)


def _zone(text: str) -> timezone:
    if text in ("Z", "UTC"):
        return UTC
    match = re.fullmatch(r"([+-])(\d{2}):?(\d{2})", text)
    if match is None:
        raise ValueError(f"not a UTC offset: {text!r}")
    sign = -1 if match[1] == "-" else 1
    return timezone(sign * timedelta(hours=int(match[2]), minutes=int(match[3])))


def timestamp(line: str, local: tzinfo) -> tuple[datetime, str] | None:
    """The time a line starts with (zone-less times are in `local`) and the rest of the line."""
    match = _TIMESTAMP.match(line)
    if match is None:
        return None
    fraction = (match["fraction"] or "0")[:6].ljust(6, "0")
    zone = _zone(match["zone"]) if match["zone"] else local
    try:
        written = datetime(
            int(match["year"]), int(match["month"]), int(match["day"]),
            int(match["hour"]), int(match["minute"]), int(match["second"]),
            int(fraction), tzinfo=zone,
        )  # fmt: skip
    except ValueError:  # 2026-13-45 is not a time, however it looks
        return None
    return written, line[match.end() :]


class _Entries:
    """The lines of a text and, on demand, the entry each belongs to.

    An entry starts at a timestamped line; the lines below it without one (a traceback) are
    part of it. Timestamps are read only for the lines asked about: a 256 KiB tail has
    thousands of lines and, on a good day, no error.
    """

    def __init__(self, text: str, local: tzinfo, starts_mid_line: bool) -> None:
        self.lines = text.splitlines()
        self.first = 1 if starts_mid_line else 0  # a tail's first line is a fragment
        self.local = local
        self.entry: dict[int, tuple[datetime, bool] | None] = {}  # by line, once known

    def of(self, index: int) -> tuple[datetime, bool] | None:
        """(written, quiet) of the entry line `index` belongs to; None above the first stamp.

        A line that looks stamped but is not a time (2026-13-45) belongs to the entry above.
        Every line walked past remembers the answer, so no line is read twice.
        """
        walked = []
        found: tuple[datetime, bool] | None = None
        for at in range(index, self.first - 1, -1):
            if at in self.entry:
                found = self.entry[at]
                break
            walked.append(at)
            stamped = timestamp(self.lines[at], self.local)
            if stamped is not None:
                found = (stamped[0], bool(_QUIET.search(stamped[1])))
                break
        for at in walked:
            self.entry[at] = found
        return found

    def numbered(self) -> Iterator[tuple[int, str]]:
        for index in range(self.first, len(self.lines)):
            if self.lines[index].strip():
                yield index, self.lines[index]


def log_lines(text: str, local: tzinfo, *, starts_mid_line: bool = False) -> list[LogLine]:
    """Every non-empty line of `text` with the time and level of the entry it belongs to.

    `starts_mid_line`: the text is the tail of a longer file, so its first line is a fragment.
    """
    entries = _Entries(text, local, starts_mid_line)
    result = []
    for index, line in entries.numbered():
        written, quiet = entries.of(index) or (None, False)
        result.append(LogLine(line, written, quiet))
    return result


def error_lines(text: str, local: tzinfo, *, starts_mid_line: bool = False) -> list[LogLine]:
    """The lines of `text` with an error word whose entry is not debug, info or notice."""
    if not _ERROR_WORDS.search(text.lower()):
        return []  # the usual day: one pass over the whole text, no line looked at
    entries = _Entries(text, local, starts_mid_line)
    result = []
    for index, line in entries.numbered():
        if _ERROR_WORDS.search(line.lower()) and ERROR.search(line):
            written, quiet = entries.of(index) or (None, False)
            if not quiet:
                result.append(LogLine(line, written, quiet))
    return result


def recent_errors(
    text: str, now: datetime, window_s: float, *, starts_mid_line: bool = False
) -> list[str]:
    """The error lines of `text` written in the `window_s` seconds up to `now`.

    `now` is the host's clock (see host_clock); its offset is the zone of zone-less timestamps.
    A line stamped after `now` counts as recent: a clock that is off must not hide an error.
    """
    local = now.tzinfo
    if local is None:
        raise ValueError("now must carry the host's UTC offset")
    since = now - timedelta(seconds=window_s)
    return [
        line.text
        for line in error_lines(text, local, starts_mid_line=starts_mid_line)
        if line.written is not None and line.written >= since
    ]
