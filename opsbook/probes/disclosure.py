"""What an answer gives away: versions, connection strings, stack traces.

A /health answer is read by load balancers and, often, by anyone. It should say "ok" and
nothing an attacker could use to pick an exploit or find a database.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from msgspec import Struct

if TYPE_CHECKING:
    from opsbook.targets import HttpTarget

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


# --- the frontend's answers: its version, its security headers ----------------------------

# The headers the frontend must send on every answer, and what makes a value acceptable.
SECURITY_HEADERS: dict[str, str] = {
    "X-Content-Type-Options": r"(?i)^nosniff$",
    "X-Frame-Options": r"(?i)^(?:DENY|SAMEORIGIN)$",
    "Referrer-Policy": (
        r"(?i)^(?:no-referrer|same-origin|strict-origin|strict-origin-when-cross-origin"
        r"|no-referrer-when-downgrade|origin|origin-when-cross-origin)$"
    ),
}


def header_problems(headers: Mapping[str, str]) -> list[str]:
    """Missing or weak security headers, as `Name: missing` or `Name: 'value'`."""
    sent = {name.lower(): value for name, value in headers.items()}  # names are case-blind
    problems = []
    for name, pattern in SECURITY_HEADERS.items():
        value = sent.get(name.lower())
        if value is None:
            problems.append(f"{name}: missing")
        elif not re.match(pattern, value.strip()):
            problems.append(f"{name}: {value.strip()[:80]!r}")
    return problems


def server_version(headers: Mapping[str, str]) -> str | None:
    """The Server header when it gives a version away (`nginx/1.22.1`), else None."""
    value = next((v for k, v in headers.items() if k.lower() == "server"), None)
    return value if value and _VERSION_IN_HEADER.search(value) else None


class ErrorPage(Struct, frozen=True):
    """The answer to a page that does not exist: where servers like to print their version."""

    server: str | None  # the Server header
    version_in_header: str | None  # the Server header when it carries a version
    version_in_page: bool  # `nginx/1.x` in the page itself
    page: str  # cut to 1000 characters, for the report


MISSING_PAGE = "/opsbook-audit-missing-page"


def error_page(target: HttpTarget) -> ErrorPage:
    """GET a page that does not exist and see what the error page tells."""
    response = target.get(MISSING_PAGE)
    headers = dict(response.headers.items())
    text = response.text
    return ErrorPage(
        response.headers.get("Server"), server_version(headers), "nginx/" in text, text[:1000]
    )


def response_headers(target: HttpTarget, path: str = "/") -> dict[str, str]:
    """The headers of GET `path`, as sent."""
    return dict(target.get(path).headers.items())
