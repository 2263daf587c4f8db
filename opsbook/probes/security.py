"""What the security and access audit reads, as pure functions over the text it was given.

The checks (checks/test_security.py, checks/test_access.py) fetch the text through testinfra,
SQL, Redis or HTTP; these functions say what it means. Nothing here opens a connection.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any

from msgspec import Struct

from opsbook.probes.logs import timestamp

# --- accounts (/etc/passwd) -------------------------------------------------------------------

# Shells that let nobody in. Debian gives `sync` the shell /bin/sync, which runs sync(1) and
# exits; shutdown and halt are the same idea on older systems.
NO_LOGIN_SHELLS = frozenset({"nologin", "false", "sync", "shutdown", "halt"})


class Account(Struct, frozen=True):
    """One line of /etc/passwd."""

    name: str
    uid: int
    shell: str

    @property
    def can_log_in(self) -> bool:
        """An empty shell means /bin/sh to login(1); any unknown program counts as a shell."""
        return self.shell.rsplit("/", 1)[-1] not in NO_LOGIN_SHELLS

    def line(self) -> str:
        return f"{self.name} uid={self.uid} shell={self.shell or '(empty: /bin/sh)'}"


def accounts(passwd: str) -> list[Account]:
    """The accounts of an /etc/passwd text; comment, blank and NIS `+` lines are left out."""
    result = []
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) < 7 or line.startswith(("#", "+", "-")) or not fields[2].isdigit():
            continue
        result.append(Account(fields[0], int(fields[2]), fields[6].strip()))
    return result


# --- files ------------------------------------------------------------------------------------


class FileMode(Struct, frozen=True):
    """A file as `stat -c '%a %U %F %n'` shows it."""

    path: str
    mode: int
    owner: str
    kind: str

    @property
    def too_open(self) -> bool:
        """A secret file is 0600 or stricter: no execute bit, nothing for group or others."""
        allowed = 0o700 if self.kind == "directory" else 0o600
        return bool(self.mode & ~allowed & 0o7777)

    def line(self) -> str:
        return f"{self.path} mode {self.mode:04o} owner {self.owner} ({self.kind})"


# Patterns are compiled when first used (re caches them), not on import: every run imports
# this module to collect its checks, and most runs never audit security.
_STAT = r"^(?P<mode>[0-7]{3,4}) (?P<owner>\S+) (?P<kind>[^/]+?) (?P<path>/.*)$"


def stat_lines(output: str) -> list[FileMode]:
    """Parse lines of `stat -c '%a %U %F %n'` (absolute paths only)."""
    stat = re.compile(_STAT)
    result = []
    for line in output.splitlines():
        match = stat.match(line)
        if match:
            kind = match["kind"].replace("regular empty file", "regular file")
            result.append(FileMode(match["path"], int(match["mode"], 8), match["owner"], kind))
    return result


# --- listening sockets (ss -ltnH) -------------------------------------------------------------

WILDCARDS = frozenset({"0.0.0.0", "::", "*"})  # noqa: S104 - recognised, never bound


class Listener(Struct, frozen=True):
    """A listening TCP socket: the address it is bound to, its port and the ss line."""

    address: str
    port: int
    line: str

    @property
    def all_interfaces(self) -> bool:
        return self.address in WILDCARDS


_LOCAL = r"^(?:\[(?P<v6>[^\]]+)\]|(?P<v4>[^\s%\[\]]+?))(?:%\S+)?:(?P<port>\d+|\*)$"


def listeners(ss_output: str) -> list[Listener]:
    """The listening sockets of `ss -ltnH` output (with or without -p).

    Columns: State Recv-Q Send-Q Local-Address:Port Peer-Address:Port [Process]; the local
    address is `0.0.0.0:80`, `[::]:80`, `*:80`, `127.0.0.1%lo:53` or `[::1]:6379`.
    """
    local = re.compile(_LOCAL)
    result = []
    for line in ss_output.splitlines():
        fields = line.split()
        if len(fields) < 5 or fields[0] != "LISTEN":
            continue
        match = local.match(fields[3])
        if match is None or match["port"] == "*":
            continue
        address = match["v6"] if match["v6"] is not None else match["v4"]
        result.append(Listener(address, int(match["port"]), line.strip()))
    return result


# --- Redis ------------------------------------------------------------------------------------


def refused_without_auth(answer: bytes) -> bool:
    """Whether a Redis server answered an unauthenticated PING with NOAUTH (or refused it)."""
    return answer.startswith((b"-NOAUTH", b"-WRONGPASS", b"-NOPERM"))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def acl_user(reply: Any) -> dict[str, Any]:
    """ACL GETUSER's answer as a mapping (redis-py parses RESP2 replies into one already)."""
    if isinstance(reply, Mapping):
        items: Iterable[tuple[Any, Any]] = reply.items()
    else:
        flat = list(reply or [])
        items = zip(flat[::2], flat[1::2], strict=False)
    user: dict[str, Any] = {}
    for key, value in items:
        if isinstance(value, list | tuple):
            user[_text(key)] = [_text(v) for v in value]
        else:
            user[_text(key)] = _text(value)
    return user


def open_default_user(user: Mapping[str, Any]) -> list[str]:
    """What makes a Redis user open to anyone: on, no password, and every command.

    Empty when it is off, needs a password, or is limited. Never returns password hashes.
    """
    flags = [str(f) for f in user.get("flags", [])]
    commands = user.get("commands", "")
    commands = " ".join(commands) if isinstance(commands, list) else str(commands)
    if "on" not in flags or "nopass" not in flags:
        return []
    everything = "+@all" in commands.split() or "allcommands" in flags
    return ["on", "nopass", *(["+@all"] if everything else [])]


def acl_evidence(user: Mapping[str, Any]) -> dict[str, Any]:
    """An ACL GETUSER answer without its password hashes, for the report."""
    return {k: v for k, v in user.items() if k not in ("passwords", "password")}


# A sample of the @dangerous category that would hurt most in an application's hands, each
# with the arguments ACL DRYRUN needs to judge it.
DANGEROUS_COMMANDS: tuple[tuple[str, ...], ...] = (
    ("FLUSHALL",),
    ("FLUSHDB",),
    ("CONFIG", "SET", "dir", "/var/tmp"),  # noqa: S108 - never run: ACL DRYRUN
    ("CONFIG", "GET", "requirepass"),
    ("DEBUG", "SLEEP", "0"),
    ("SHUTDOWN",),
    ("ACL", "SETUSER", "intruder"),
    ("MODULE", "LOAD", "/var/tmp/module.so"),  # noqa: S108 - never run
    ("REPLICAOF", "127.0.0.1", "1"),
    ("KEYS", "*"),
    ("SAVE",),
    ("CLIENT", "KILL", "127.0.0.1:1"),
)


# --- HTTP -------------------------------------------------------------------------------------

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
    problems = []
    for name, pattern in SECURITY_HEADERS.items():
        value = headers.get(name)
        if value is None:
            problems.append(f"{name}: missing")
        elif not re.match(pattern, value.strip()):
            problems.append(f"{name}: {value.strip()[:80]!r}")
    return problems


def server_version(headers: Mapping[str, str]) -> str | None:
    """The Server header when it gives a version away (`nginx/1.22.1`), else None."""
    value = headers.get("Server")
    return value if value and re.search(r"\d+\.\d+", value) else None


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


# --- image scan (trivy image --format json) ---------------------------------------------------


class Vulnerability(Struct, frozen=True):
    target: str
    package: str
    installed: str
    fixed: str
    vulnerability_id: str
    severity: str

    def line(self) -> str:
        fixed = f"fixed in {self.fixed}" if self.fixed else "no fix yet"
        return (
            f"{self.severity} {self.vulnerability_id} {self.package} {self.installed} "
            f"({fixed}) in {self.target}"
        )


def trivy_vulnerabilities(report: Mapping[str, Any]) -> list[Vulnerability]:
    """Every vulnerability of a `trivy image --format json` report (schema version 2)."""
    found = []
    for result in report.get("Results") or []:
        for vuln in result.get("Vulnerabilities") or []:
            found.append(
                Vulnerability(
                    target=str(result.get("Target", "")),
                    package=str(vuln.get("PkgName", "")),
                    installed=str(vuln.get("InstalledVersion", "")),
                    fixed=str(vuln.get("FixedVersion", "")),
                    vulnerability_id=str(vuln.get("VulnerabilityID", "")),
                    severity=str(vuln.get("Severity", "UNKNOWN")),
                )
            )
    return found
