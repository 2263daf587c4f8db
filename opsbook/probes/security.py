"""The incident runbook's log audit: failed logins, refused access and attack patterns in the
service logs of a window.

`suspicious_in_logs` reads each log's tail and the host's clock through opsbook.probes.logs
(under `timeout`); `suspicious_lines` says which lines of a text count, and is pure.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING

from msgspec import Struct

from opsbook.probes.host import NotObserved
from opsbook.probes.logs import clock, log_tail, timestamp

if TYPE_CHECKING:
    from opsbook.targets import HostTarget

# The audit looks back a day, not minutes: it reads more of each tail than LOG-001 does.
TAIL_BYTES = 1024 * 1024

# --- logs: the incident runbook's log audit ---------------------------------------------------

SUSPICIOUS: dict[str, str] = {
    "failed login": (
        r"(?i)password authentication failed|authentication failed for user"
        r"|no pg_hba\.conf entry|\bWRONGPASS\b|\bNOAUTH\b|invalid username or password"
        r"|failed password for|login failed"
    ),
    "unauthorized": r"\" (?:401|403) \d+ ",  # nginx combined log: status, size
    "path traversal": r"(?i)\.\./|\.\.%2f|%2e%2e(?:/|%2f)|/etc/passwd",
    "sql injection": (
        r"(?i)union(?:\s|\+|%20|/\*\*/)+(?:all(?:\s|\+|%20)+)?select"
        r"|'\s*or\s*'?1'?\s*=\s*'?1|%27(?:\+|%20)*or(?:\+|%20)"
    ),
    "script injection": r"(?i)<script|%3cscript|javascript:",
}

_MONTHS = {
    month: number
    for number, month in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
# nginx: 127.0.0.1 - - [27/Nov/2026:12:49:46 +0000] "GET / HTTP/1.1" 200 ...
_NGINX_TIME = (
    r"\[(?P<day>\d{2})/(?P<mon>[A-Z][a-z]{2})/(?P<year>\d{4}):(?P<h>\d{2}):(?P<m>\d{2}):"
    r"(?P<s>\d{2}) (?P<zone>[+-]\d{4})\]"
)
# Redis: 27642:M 27 Nov 2026 12:49:45.600 # Server initialized (local time, no zone)
_REDIS_TIME = (
    r"^\d+:[XCSM] (?P<day>\d{1,2}) (?P<mon>[A-Z][a-z]{2}) (?P<year>\d{4}) "
    r"(?P<h>\d{2}):(?P<m>\d{2}):(?P<s>\d{2})"
)


def _when(line: str, local: tzinfo, stamps: Sequence[re.Pattern[str]]) -> datetime | None:
    stamped = timestamp(line, local)
    if stamped is not None:
        return stamped[0]
    for pattern in stamps:
        match = pattern.search(line)
        if match is None or match["mon"] not in _MONTHS:
            continue
        zone: tzinfo = local
        if "zone" in match.groupdict() and match["zone"]:
            sign = -1 if match["zone"][0] == "-" else 1
            hours, minutes = int(match["zone"][1:3]), int(match["zone"][3:5])
            zone = timezone(sign * timedelta(hours=hours, minutes=minutes))
        try:
            return datetime(
                int(match["year"]), _MONTHS[match["mon"]], int(match["day"]),
                int(match["h"]), int(match["m"]), int(match["s"]), tzinfo=zone,
            )  # fmt: skip
        except ValueError:
            return None
    return None


class Suspicious(Struct, frozen=True):
    """A log line the incident runbook wants to see, and why."""

    kind: str
    line: str


def suspicious_lines(
    text: str, now: datetime, window_s: float, *, starts_mid_line: bool = False
) -> list[Suspicious]:
    """Lines of a log written in the `window_s` seconds up to `now` that show failed logins,
    refused access (HTTP 401/403) or attack patterns (path traversal, SQL or script injection).

    Timestamps: those of opsbook.probes.logs, nginx's access log and Redis' log. A line without
    its own timestamp belongs to the stamped line above it; lines before the first are left out.
    """
    local = now.tzinfo
    if local is None:
        raise ValueError("now must carry the host's UTC offset")
    since = now - timedelta(seconds=window_s)
    lines = text.splitlines()[1:] if starts_mid_line else text.splitlines()
    stamps = (re.compile(_NGINX_TIME), re.compile(_REDIS_TIME))
    suspicious = {kind: re.compile(pattern) for kind, pattern in SUSPICIOUS.items()}
    found = []
    written: datetime | None = None
    for line in lines:
        if not line.strip():
            continue
        written = _when(line, local, stamps) or written
        if written is None or written < since:
            continue
        for kind, pattern in suspicious.items():
            if pattern.search(line):
                found.append(Suspicious(kind, line))
                break
    return found


class LogAudit(Struct, frozen=True):
    """What one log holds of the window: its suspicious lines, or why it could not be read."""

    path: str
    found: list[Suspicious]
    unreadable: str | None = None  # the reason, e.g. "cannot read: Permission denied"

    def counts(self) -> dict[str, int]:
        """How many lines of each kind, in the order first seen."""
        kinds: dict[str, int] = {}
        for line in self.found:
            kinds[line.kind] = kinds.get(line.kind, 0) + 1
        return kinds

    def summary(self) -> str:
        """`1 path traversal, 2 failed login`."""
        return ", ".join(f"{count} {kind}" for kind, count in self.counts().items())

    def evidence(self, last: int) -> str:
        """The last `last` suspicious lines, each with its kind, for the report."""
        earlier = len(self.found) - last
        shown = [f"... ({earlier} earlier lines not shown)"] if earlier > 0 else []
        return "\n".join(shown + [f"[{s.kind}] {s.line}" for s in self.found[-last:]])


def suspicious_in_logs(
    host: HostTarget, paths: Sequence[str], window_s: float, *, timeout_s: float
) -> list[LogAudit]:
    """The suspicious lines each log on the host holds of the last `window_s` seconds of the
    host's own clock. A log that cannot be read is kept with its reason, not left out."""
    now = clock(host, timeout_s=timeout_s)
    audits = []
    for path in paths:
        try:
            tail = log_tail(host, path, timeout_s=timeout_s, max_bytes=TAIL_BYTES)
        except NotObserved as exc:
            audits.append(LogAudit(path, [], unreadable=exc.reason))
            continue
        found = suspicious_lines(tail.text, now, window_s, starts_mid_line=tail.cut)
        audits.append(LogAudit(path, found))
    return audits
