"""The security and access audit's parsers, on texts as the real tools print them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from opsbook.probes.accounts import accounts
from opsbook.probes.disclosure import header_problems, server_version
from opsbook.probes.files import FileMode
from opsbook.probes.images import trivy_vulnerabilities
from opsbook.probes.redis_security import (
    acl_evidence,
    acl_user,
    open_default_user,
    refused_without_auth,
)
from opsbook.probes.security import LogAudit, Suspicious, suspicious_lines
from opsbook.probes.sockets import listeners

PASSWD = """root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
sync:x:4:65534:sync:/bin:/bin/sync
postgres:x:101:104:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash
ftp:x:102:105::/srv/ftp:/bin/false
toor:x:0:0::/root:/bin/sh
legacy:x:103:106::/home/legacy:
# a comment
+nisuser::::::
"""


def test_accounts_and_login_shells() -> None:
    found = {a.name: a for a in accounts(PASSWD)}
    assert set(found) == {"root", "daemon", "sync", "postgres", "ftp", "toor", "legacy"}
    assert [a.name for a in found.values() if a.can_log_in] == [
        "root",
        "postgres",
        "toor",
        "legacy",
    ]
    assert found["toor"].uid == 0
    assert found["legacy"].line() == "legacy uid=103 shell=(empty: /bin/sh)"


# `ss -ltnpH` on Debian 12, as root.
SS = """LISTEN 0      128      0.0.0.0:2024  0.0.0.0:*
LISTEN 0      511    127.0.0.1:38965 0.0.0.0:*    users:(("nginx",pid=1,fd=6))
LISTEN 0      511    0.0.0.0:39973 0.0.0.0:*    users:(("redis-server",pid=2,fd=6))
LISTEN 0      4096         [::]:22          [::]:*
LISTEN 0      4096            *:9090             *:*
LISTEN 0      4096        [::1]:6379         [::]:*
LISTEN 0      4096   127.0.0.53%lo:53        0.0.0.0:*
"""


def test_listeners_know_wildcards_from_specific_addresses() -> None:
    found = [(s.address, s.port, s.all_interfaces) for s in listeners(SS)]
    assert found == [
        ("0.0.0.0", 2024, True),
        ("127.0.0.1", 38965, False),
        ("0.0.0.0", 39973, True),
        ("::", 22, True),
        ("*", 9090, True),
        ("::1", 6379, False),
        ("127.0.0.53", 53, False),
    ]
    assert "redis-server" in listeners(SS)[2].line


def test_secret_file_modes() -> None:
    assert not FileMode("/srv/a.password", 0o600, "root", "regular file").too_open
    assert not FileMode("/srv/key.pem", 0o400, "app", "regular file").too_open
    assert FileMode("/srv/.env", 0o644, "root", "regular file").too_open
    assert FileMode("/x", 0o700, "root", "regular file").too_open  # executable secret
    assert not FileMode("/srv/secrets", 0o700, "root", "directory").too_open
    assert FileMode("/srv/keys", 0o750, "root", "directory").too_open
    assert FileMode("/srv/.env", 0o644, "root", "regular file").line() == (
        "/srv/.env mode 0644 owner root (regular file)"
    )


def test_redis_answers() -> None:
    assert refused_without_auth(b"-NOAUTH Authentication required.\r\n")
    assert not refused_without_auth(b"+PONG\r\n")
    assert not refused_without_auth(b"")


# redis-py 8 parses ACL GETUSER into a dict; RESP2 raw replies are flat lists.
OPEN_DEFAULT = {
    "flags": ["on", "nopass", "sanitize-payload"],
    "passwords": [],
    "commands": "+@all",
    "keys": "~*",
    "channels": "&*",
    "selectors": [],
}
PROTECTED_DEFAULT = {**OPEN_DEFAULT, "flags": ["on", "sanitize-payload"], "passwords": ["cdb5"]}


def test_default_user_judgement() -> None:
    assert open_default_user(acl_user(OPEN_DEFAULT)) == ["on", "nopass", "+@all"]
    assert open_default_user(acl_user(PROTECTED_DEFAULT)) == []
    assert open_default_user({**OPEN_DEFAULT, "flags": ["off", "nopass"]}) == []
    flat = [b"flags", [b"on", b"nopass"], b"passwords", [], b"commands", b"-@all +get"]
    assert open_default_user(acl_user(flat)) == ["on", "nopass"]
    assert "passwords" not in acl_evidence(acl_user(PROTECTED_DEFAULT))


def test_security_headers_and_server_version() -> None:
    good = {
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
    }
    assert header_problems(good) == []
    assert header_problems({**good, "X-Frame-Options": "ALLOW-FROM x"}) == [
        "X-Frame-Options: 'ALLOW-FROM x'"
    ]
    assert header_problems({}) == [
        "X-Content-Type-Options: missing",
        "X-Frame-Options: missing",
        "Referrer-Policy: missing",
    ]
    assert server_version({"Server": "nginx/1.22.1"}) == "nginx/1.22.1"
    assert server_version({"Server": "nginx"}) is None


NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)

LOGS = "\n".join(
    [
        "2026-11-27 11:59:00.100 UTC [77] opsbook_monitor@chatdb FATAL:  password authentication"
        ' failed for user "opsbook_monitor"',
        "2026-11-27 11:59:00.100 UTC [77] opsbook_monitor@chatdb DETAIL:  Connection matched"
        " pg_hba.conf line 3",
        '2026-11-25 11:59:00.100 UTC [70] x@chatdb FATAL:  password authentication failed for "x"',
        '127.0.0.1 - - [27/Nov/2026:12:59:30 +0100] "GET /static/../../etc/passwd HTTP/1.1" 404 1'
        ' "-" "curl"',
        '127.0.0.1 - - [27/Nov/2026:11:58:00 +0000] "GET /search?q=1%20UNION%20SELECT%20password'
        ' HTTP/1.1" 200 5 "-" "-"',
        '127.0.0.1 - - [27/Nov/2026:11:58:01 +0000] "GET /?q=%3Cscript%3Ealert(1) HTTP/1.1" 200 5',
        '127.0.0.1 - - [27/Nov/2026:11:58:02 +0000] "GET /api/admin HTTP/1.1" 401 5 "-" "-"',
        '127.0.0.1 - - [27/Nov/2026:11:58:03 +0000] "GET /health HTTP/1.1" 200 15 "-" "-"',
        "27642:M 27 Nov 2026 11:59:45.600 * Ready to accept connections",
    ]
)


def test_suspicious_lines_in_the_window() -> None:
    found = suspicious_lines(LOGS, NOW, 3600)
    assert [s.kind for s in found] == [
        "failed login",
        "path traversal",
        "sql injection",
        "script injection",
        "unauthorized",
    ]
    assert "11:59:00.100" in found[0].line
    # The day-old failure is outside the window; zones are honoured (12:59:30 +0100 is 11:59:30Z).
    assert len(suspicious_lines(LOGS, NOW, 86400 * 3)) == 6
    assert suspicious_lines(LOGS, NOW + timedelta(hours=2), 60) == []


def test_suspicious_lines_local_time_and_mid_line() -> None:
    local = timezone(timedelta(hours=2))
    text = (
        "fragment NOAUTH\n"
        "27642:M 27 Nov 2026 13:59:00.000 # WRONGPASS invalid username-password pair\n"
    )
    found = suspicious_lines(text, NOW.astimezone(local), 120, starts_mid_line=True)
    assert [s.kind for s in found] == ["failed login"]
    with pytest.raises(ValueError, match="UTC offset"):
        suspicious_lines(text, NOW.replace(tzinfo=None), 60)


# The shape of `trivy image --format json` (schema version 2), reduced to two findings.
TRIVY = {
    "SchemaVersion": 2,
    "ArtifactName": "nginx:1.25.3",
    "ArtifactType": "container_image",
    "Results": [
        {
            "Target": "nginx:1.25.3 (debian 12.4)",
            "Class": "os-pkgs",
            "Type": "debian",
            "Vulnerabilities": [
                {
                    "VulnerabilityID": "CVE-2024-2511",
                    "PkgName": "libssl3",
                    "InstalledVersion": "3.0.11-1~deb12u2",
                    "FixedVersion": "3.0.13-1~deb12u1",
                    "Severity": "HIGH",
                }
            ],
        },
        {"Target": "usr/local/bin/app", "Class": "lang-pkgs", "Vulnerabilities": None},
    ],
}


def test_trivy_report() -> None:
    (vuln,) = trivy_vulnerabilities(TRIVY)
    assert vuln.line() == (
        "HIGH CVE-2024-2511 libssl3 3.0.11-1~deb12u2 (fixed in 3.0.13-1~deb12u1) "
        "in nginx:1.25.3 (debian 12.4)"
    )
    assert trivy_vulnerabilities({"Results": None}) == []


def test_log_audit_summary_and_evidence() -> None:
    found = [Suspicious("failed login", f"line {n}") for n in range(3)]
    audit = LogAudit("/var/log/x.log", [*found, Suspicious("sql injection", "union select")])
    assert audit.summary() == "3 failed login, 1 sql injection"
    assert audit.evidence(last=2).splitlines() == [
        "... (2 earlier lines not shown)",
        "[failed login] line 2",
        "[sql injection] union select",
    ]
    assert LogAudit("/x", [], unreadable="cannot read: Permission denied").summary() == ""
