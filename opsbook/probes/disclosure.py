"""What an answer gives away: versions, connection strings, stack traces.

A /health answer is read by load balancers and, often, by anyone. It should say "ok" and
nothing an attacker could use to pick an exploit or find a database.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_PATTERNS: dict[str, re.Pattern[str]] = {
    "connection string": re.compile(
        r"\b(?:postgres(?:ql)?|mysql|mongodb(?:\+srv)?|rediss?|amqps?)://[^\s\"'<>]+", re.I
    ),
    "credential": re.compile(
        r"\b(?:password|passwd|secret|api[_-]?key|token)\b\s*[\"']?\s*[=:]", re.I
    ),
    "stack trace": re.compile(
        r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+"
        r"|\bat [\w$.]+\([\w]+\.(?:java|kt|scala):\d+\)|Exception in thread"
        r"|^\s+at .+:\d+:\d+\)?$",
        re.M,
    ),
    "version": re.compile(
        r"\"(?:version|build|commit|go_version|python_version)\"\s*:"
        r"|\b[A-Za-z][\w.-]*/v?\d+\.\d+(?:\.\d+)?\b"
        r"|\b(?:PostgreSQL|Redis|nginx|Apache|Python|Node\.js|OpenSSL)[ /]v?\d+\.\d+",
        re.I,
    ),
}
_HEADERS = ("Server", "X-Powered-By", "X-AspNet-Version", "X-Runtime-Version")
_VERSION_IN_HEADER = re.compile(r"\d+\.\d+")


def disclosures(body: str, headers: Mapping[str, str]) -> list[str]:
    """Each thing the answer gives away, as `kind: excerpt` (excerpts cut to 80 characters)."""
    found = []
    for kind, pattern in _PATTERNS.items():
        for match in pattern.finditer(body):
            found.append(f"{kind}: {match.group(0).strip()[:80]}")
    for name in _HEADERS:
        value = headers.get(name)
        if value and (name != "Server" or _VERSION_IN_HEADER.search(value)):
            found.append(f"version: header {name}: {value[:80]}")
    return list(dict.fromkeys(found))
