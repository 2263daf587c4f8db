"""Security audit: secrets, PostgreSQL, Redis, nginx, Grafana, the incident log audit, images.

Every finding carries what was observed (the file and its mode, the pg_hba row, the ACL, the
header, the log line), redacted like everything else the plugin reports. A check that lacks
the privilege to look ends as "could not evaluate" (ERROR) and names the grant it needs.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from opsbook import Severity, TargetUnreachable, check
from opsbook.probes.logs import host_clock
from opsbook.probes.security import (
    DANGEROUS_COMMANDS,
    acl_evidence,
    acl_user,
    header_problems,
    open_default_user,
    refused_without_auth,
    server_version,
    stat_lines,
    suspicious_lines,
    trivy_vulnerabilities,
)
from opsbook.targets import HttpTarget, PostgresTarget, RedisTarget

pytestmark = [pytest.mark.audit, pytest.mark.security]

TAIL_BYTES = 1024 * 1024  # the log audit looks back a day, not minutes: read more of the tail
EVIDENCE_LINES = 20


# --- secret files -----------------------------------------------------------------------------

# Each glob is expanded by the host's shell (IFS is a newline, so paths with spaces stay whole);
# `GLOB pattern` lines say which glob the stat lines below belong to.
_LIST_SECRETS = """IFS='
'
for pattern do
  printf 'GLOB %s\\n' "$pattern"
  for f in $pattern; do [ -e "$f" ] && stat -L -c '%a %U %F %n' -- "$f"; done
done
true"""


@check("SEC-001", Severity.HIGH)
def test_secret_files_are_private(host, request, inventory, finding) -> None:
    """Secret files are mode 0600 or stricter and belong to the expected owner.

    Risk: any local user or compromised service can read a world- or group-readable .env or
    key and log in to the database or queue with it.
    """
    name = request.node.callspec.params["host"]
    globs = inventory.audit.secret_files
    if not globs:
        pytest.skip(f"{name}: no secret files listed in the inventory (audit.secret_files)")
    owner = inventory.audit.secret_file_owner
    listing = host.run("sh -c %s sh " + " ".join(["%s"] * len(globs)), _LIST_SECRETS, *globs)
    assert listing.rc == 0, f"{name}: cannot list secret files: {listing.stderr.strip()}"
    files, unmatched, current, matched = [], [], "", 0
    for line in [*str(listing.stdout).splitlines(), "GLOB "]:
        if line.startswith("GLOB "):
            if current and not matched:
                unmatched.append(current)
            current, matched = line.removeprefix("GLOB "), 0
            continue
        found = stat_lines(line)
        files.extend(found)
        matched += len(found)
    problems = [
        f"{f.path} has mode {f.mode:04o} (expected 0600 or stricter)" for f in files if f.too_open
    ]
    problems += [
        f"{f.path} belongs to {f.owner} (expected {owner})" for f in files if f.owner != owner
    ]
    finding.observe(len(problems), expected=0)
    finding.attach("files (path, mode, owner)", "\n".join(f.line() for f in files) or "(none)")
    if unmatched:
        finding.attach("globs that matched nothing", "\n".join(unmatched))
    assert not problems, f"{name}: " + "; ".join(problems)


# --- PostgreSQL -------------------------------------------------------------------------------

GRANT_HBA = (
    "GRANT SELECT ON pg_hba_file_rules TO {role}; "
    "GRANT EXECUTE ON FUNCTION pg_hba_file_rules() TO {role} (in the checked database)"
)


@pytest.fixture
def hba_rules(postgres: PostgresTarget) -> list[tuple[Any, ...]]:
    """The rows of pg_hba_file_rules; "could not evaluate" when the role may not read them."""
    import psycopg

    try:
        return postgres.query(
            "SELECT line_number, type, database, user_name, address, auth_method, error"
            " FROM pg_hba_file_rules ORDER BY line_number"
        )
    except psycopg.errors.InsufficientPrivilege:
        pass
    pytest.fail(
        f"could not evaluate: postgres {postgres.name}: {postgres.spec.user} may not read "
        f"pg_hba_file_rules (superuser only by default); grant it: "
        + GRANT_HBA.format(role=postgres.spec.user),
        pytrace=False,
    )


@check("SEC-010", Severity.CRITICAL)
def test_postgres_has_no_trust_authentication(postgres: PostgresTarget, hba_rules, finding) -> None:
    """PostgreSQL has no `trust` line in pg_hba.conf.

    Risk: `trust` lets anyone who can connect log in as any role, the superuser included,
    without a password.
    """
    trusted = [row for row in hba_rules if row[5] == "trust"]
    broken = [row for row in hba_rules if row[6]]
    finding.observe(len(trusted), expected=0)
    header = "line, type, database, user, address, method, error"
    finding.attach(f"pg_hba_file_rules ({header})", hba_rules)
    problems = [
        f"line {row[0]}: {row[1]} {','.join(row[2] or [])} {','.join(row[3] or [])} "
        f"{row[4] or ''} trust".replace("  ", " ")
        for row in trusted
    ] + [f"line {row[0]}: not loaded: {row[6]}" for row in broken]
    assert not problems, (
        f"postgres {postgres.name}: pg_hba.conf "
        + "; ".join(problems)
        + (" (expected no trust and no invalid lines)")
    )


def _setting(postgres: PostgresTarget, name: str) -> str:
    ((value,),) = postgres.query("SELECT current_setting(%s)", (name,))
    return str(value)


@check("SEC-011", Severity.MEDIUM)
def test_postgres_hashes_passwords_with_scram(postgres: PostgresTarget, finding) -> None:
    """PostgreSQL stores new passwords as SCRAM-SHA-256.

    Risk: MD5 verifiers can be replayed as they are (pass-the-hash) and cracked quickly.
    """
    value = _setting(postgres, "password_encryption")
    finding.observe(value, expected="scram-sha-256")
    assert value == "scram-sha-256", (
        f"postgres {postgres.name}: password_encryption is {value!r} (expected 'scram-sha-256')"
    )


@check("SEC-012", Severity.HIGH)
def test_app_roles_are_not_privileged(postgres: PostgresTarget, inventory, finding) -> None:
    """The application's roles are not superuser and cannot create roles or databases.

    Risk: an SQL injection in the application becomes control of the whole server: every
    database, new roles, and (as superuser) commands on the host.
    """
    roles = list(inventory.audit.app_roles)
    if not roles:
        pytest.skip(f"postgres {postgres.name}: no application roles listed (audit.app_roles)")
    rows = postgres.query(
        "SELECT r.rolname, r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolreplication,"
        " r.rolbypassrls, ARRAY(SELECT g.rolname FROM pg_roles g WHERE g.oid <> r.oid"
        "  AND pg_has_role(r.oid, g.oid, 'MEMBER') AND (g.rolsuper OR g.rolname IN"
        "  ('pg_execute_server_program', 'pg_write_server_files', 'pg_read_server_files')))"
        " FROM pg_roles r WHERE r.rolname = ANY(%s) ORDER BY 1",
        (roles,),
    )
    finding.attach(
        "pg_roles (role, superuser, createrole, createdb, replication, bypassrls, via)", rows
    )
    problems = [f"role {role} does not exist" for role in roles if role not in {r[0] for r in rows}]
    for role, *flags, via in rows:
        names = ("SUPERUSER", "CREATEROLE", "CREATEDB", "REPLICATION", "BYPASSRLS")
        held = [flag for flag, on in zip(names, flags, strict=True) if on]
        held += [f"member of {g}" for g in via]
        if held:
            problems.append(f"{role} has {', '.join(held)}")
    finding.observe(len(problems), expected=0)
    assert not problems, (
        f"postgres {postgres.name}: "
        + "; ".join(problems)
        + (" (expected none of SUPERUSER, CREATEROLE, CREATEDB, REPLICATION, BYPASSRLS)")
    )


@check("SEC-013", Severity.HIGH)
def test_postgres_encrypts_connections(postgres: PostgresTarget, inventory, finding) -> None:
    """PostgreSQL serves TLS when its traffic leaves the host.

    Risk: passwords' challenge-responses and every chat message cross the network in clear.
    """
    if not inventory.audit.require_ssl:
        pytest.skip(f"postgres {postgres.name}: audit.require_ssl is off (traffic stays on host)")
    value = _setting(postgres, "ssl")
    finding.observe(value, expected="on")
    assert value == "on", f"postgres {postgres.name}: ssl is {value!r} (expected 'on')"


@check("SEC-014", Severity.LOW)
def test_postgres_logs_connections(postgres: PostgresTarget, finding) -> None:
    """PostgreSQL logs every connection.

    Risk: after an incident nobody can tell who logged in, from where, and when.
    """
    value = _setting(postgres, "log_connections")
    finding.observe(value, expected="on")
    assert value == "on", f"postgres {postgres.name}: log_connections is {value!r} (expected 'on')"


# --- Redis ------------------------------------------------------------------------------------


def _unauthenticated_ping(target: RedisTarget) -> bytes:
    """PING on a fresh socket, sending nothing else (redis-py 8 would send HELLO first)."""
    parts = urlsplit(target.spec.url)
    address = (parts.hostname or "127.0.0.1", parts.port or 6379)
    try:
        with socket.create_connection(address, timeout=target.timeout) as raw:
            stream: socket.socket = raw
            if parts.scheme == "rediss":
                import ssl  # a weekly audit's need; kept out of every run's start-up

                context = ssl.create_default_context()
                stream = context.wrap_socket(raw, server_hostname=address[0])
            stream.sendall(b"PING\r\n")
            return stream.recv(256)
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise TargetUnreachable("redis", target.name, target.where, reason) from None


@check("SEC-020", Severity.CRITICAL)
def test_redis_refuses_unauthenticated_clients(redis_target: RedisTarget, finding) -> None:
    """Redis refuses a client that has not authenticated (PING gets NOAUTH).

    Risk: anyone who reaches the port reads and rewrites the message queue, or reconfigures
    Redis to write files on the host.
    """
    answer = _unauthenticated_ping(redis_target)
    shown = answer.decode("utf-8", "replace").strip()[:120]
    finding.observe(shown, expected="-NOAUTH ...")
    assert refused_without_auth(answer), (
        f"redis {redis_target.name}: an unauthenticated PING answered {shown!r} (expected -NOAUTH)"
    )


GRANT_ACL = "ACL SETUSER {user} +acl|getuser +acl|dryrun"


def _checker(redis_target: RedisTarget) -> str:
    return urlsplit(redis_target.spec.url).username or "default"


@pytest.fixture
def acl(redis, redis_target: RedisTarget) -> Any:
    """Run ACL subcommands as the checker; "could not evaluate" when it may not run them."""
    import redis as redis_module

    user = _checker(redis_target)
    denied = None
    try:
        redis.execute_command("ACL", "DRYRUN", user, "PING")
        redis.execute_command("ACL", "GETUSER", "default")
    except redis_module.exceptions.NoPermissionError as exc:
        denied = str(exc).rsplit(" ", 2)[-2]
    if denied is not None:
        pytest.fail(
            f"could not evaluate: redis {redis_target.name}: the checker user {user} may not "
            f"run {denied}; grant it: " + GRANT_ACL.format(user=user),
            pytrace=False,
        )
    return lambda *args: redis.execute_command("ACL", *args)


@check("SEC-021", Severity.CRITICAL)
def test_redis_default_user_is_not_open(acl, redis_target: RedisTarget, finding) -> None:
    """Redis' default user is not passwordless with every command.

    Risk: the default user is who every new connection is; `nopass +@all` gives anyone who
    reaches the port full control.
    """
    user = acl_user(acl("GETUSER", "default"))
    finding.attach("ACL GETUSER default (without password hashes)", acl_evidence(user))
    open_flags = open_default_user(user)
    finding.observe(" ".join(open_flags) or "protected", expected="protected")
    assert not open_flags, (
        f"redis {redis_target.name}: the default user is {' '.join(open_flags)} "
        "(expected a password or off)"
    )


@check("SEC-022", Severity.HIGH)
def test_redis_users_cannot_run_dangerous_commands(
    acl, redis_target: RedisTarget, inventory, finding
) -> None:
    """The application's and the checker's Redis users cannot run dangerous commands.

    Risk: a compromised application or a leaked checker password could flush the queue,
    rewrite the configuration, or turn Redis into a file writer on the host.
    """
    import redis as redis_module

    users = list(dict.fromkeys([*inventory.audit.redis_app_users, _checker(redis_target)]))
    users = [u for u in users if u != "default"]  # the admin user: SEC-021 judges it
    allowed: dict[str, list[str]] = {}
    problems = []
    for user in users:
        for command in DANGEROUS_COMMANDS:
            try:
                answer = acl("DRYRUN", user, *command)
            except redis_module.ResponseError as exc:
                if "not found" not in str(exc):
                    raise
                problems.append(f"user {user} does not exist")
                break
            if answer in ("OK", b"OK"):
                allowed.setdefault(user, []).append(" ".join(command))
    shown = [f"{user}: {command}" for user, commands in allowed.items() for command in commands]
    finding.observe(len(shown), expected=0)
    finding.attach("ACL DRYRUN allowed", "\n".join(shown) or "(none)")
    problems += [
        f"{user} may run {len(commands)} of {len(DANGEROUS_COMMANDS)} dangerous commands"
        for user, commands in allowed.items()
    ]
    more = " ..." if len(shown) > 3 else ""
    assert not problems, (
        f"redis {redis_target.name}: "
        + "; ".join(problems)
        + (f" ({'; '.join(shown[:3])}{more})" if shown else "")
    )


# --- nginx (the frontend) ---------------------------------------------------------------------


def _frontend(http_service: HttpTarget) -> HttpTarget:
    if http_service.spec.kind != "frontend":
        pytest.skip(f"{http_service.name}: not the frontend (nginx's hardening is checked there)")
    return http_service


@check("SEC-030", Severity.LOW)
def test_nginx_hides_its_version(http_service: HttpTarget, finding) -> None:
    """nginx does not tell its version (server_tokens off).

    Risk: a version number tells an attacker which known exploit to try.
    """
    frontend = _frontend(http_service)
    response = frontend.get("/opsbook-audit-missing-page")
    in_header = server_version(response.headers)
    in_page = "nginx/" in response.text
    finding.observe(response.headers.get("Server", "(no Server header)"), expected="no version")
    finding.attach("error page", response.text[:1000])
    disclosed = [f"Server: {in_header}"] if in_header else []
    disclosed += ["in its error page"] if in_page else []
    assert not disclosed, (
        f"{frontend.name}: discloses its version: {'; '.join(disclosed)} "
        "(expected server_tokens off)"
    )


@check("SEC-031", Severity.MEDIUM)
def test_nginx_sends_security_headers(http_service: HttpTarget, finding) -> None:
    """nginx sends the security headers (X-Content-Type-Options, X-Frame-Options, Referrer-Policy).

    Risk: without them browsers guess content types, let other sites frame the chat
    (clickjacking) and leak chat URLs to other sites.
    """
    frontend = _frontend(http_service)
    response = frontend.get("/")
    problems = header_problems(response.headers)
    finding.observe(len(problems), expected=0)
    finding.attach("headers of GET /", "\n".join(f"{k}: {v}" for k, v in response.headers.items()))
    assert not problems, f"{frontend.name}: GET / " + "; ".join(problems)


# Oldest first; Python names the versions it can offer.
TLS_VERSIONS = ("TLSv1", "TLSv1_1", "TLSv1_2", "TLSv1_3")
WEAK_TLS = ("TLSv1", "TLSv1_1")


def _accepts(host: str, port: int, version: str, timeout: float) -> bool:
    import ssl  # a weekly audit's need; kept out of every run's start-up

    with warnings.catch_warnings():
        # Offering TLS 1.0/1.1 is the point of the probe; Python deprecates the names.
        warnings.simplefilter("ignore", DeprecationWarning)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # probing protocols, not trust
        context.minimum_version = context.maximum_version = getattr(ssl.TLSVersion, version)
        # OpenSSL 3's default security level refuses TLS < 1.2 in the client itself.
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            return True
    except ssl.SSLError:
        return False


@check("SEC-032", Severity.HIGH)
def test_tls_protocols_are_current(http_service: HttpTarget, finding) -> None:
    """The frontend serves TLS 1.2 or newer only.

    Risk: TLS 1.0 and 1.1 have known attacks (BEAST, POODLE-style downgrades) and are
    refused by current browsers' policies.
    """
    frontend = _frontend(http_service)
    parts = urlsplit(frontend.spec.url)
    if parts.scheme != "https":
        pytest.skip(f"{frontend.name}: {frontend.spec.url} is http: no TLS served to check")
    host, port = parts.hostname or "", parts.port or 443
    try:
        accepted = [v for v in TLS_VERSIONS if _accepts(host, port, v, frontend.timeout)]
    except OSError as exc:
        raise TargetUnreachable("http", frontend.name, frontend.where, str(exc)) from None
    weak = [v for v in accepted if v in WEAK_TLS]
    finding.observe([v.replace("_", ".") for v in accepted], expected="TLSv1.2, TLSv1.3 only")
    assert accepted, f"{frontend.name}: no TLS version was accepted"
    assert not weak, (
        f"{frontend.name}: accepts {', '.join(v.replace('_', '.') for v in weak)} "
        "(expected TLSv1.2 or newer only)"
    )


# --- Grafana ----------------------------------------------------------------------------------


def _plain_request(target: HttpTarget, method: str, path: str, **kwargs: Any) -> Any:
    """A request without the inventory's credentials: what a stranger would get."""
    import requests

    target.reachable()
    try:
        return requests.request(
            method, target.spec.url + path, timeout=target.timeout, allow_redirects=False, **kwargs
        )
    except requests.RequestException as exc:
        raise TargetUnreachable("http", target.name, target.where, str(exc)[:200]) from None


@check("SEC-040", Severity.CRITICAL)
def test_grafana_refuses_default_admin_password(grafana: HttpTarget, finding) -> None:
    """Grafana refuses admin/admin.

    Risk: Grafana's first-start password is known to everyone; with it, an attacker reads
    every dashboard and data source, and data sources hold database credentials.
    """
    response = _plain_request(
        grafana, "POST", "/login", json={"user": "admin", "password": "admin"}
    )
    finding.observe(response.status_code, expected="401")
    finding.attach("POST /login admin/admin", response.text[:1000])
    assert response.status_code != 200, (
        f"grafana {grafana.name}: POST /login with admin/admin answered 200 (expected 401)"
    )
    assert response.status_code in (401, 403), (
        f"grafana {grafana.name}: POST /login with admin/admin answered "
        f"{response.status_code} (expected 401)"
    )


@check("SEC-041", Severity.HIGH)
def test_grafana_has_no_anonymous_access(grafana: HttpTarget, finding) -> None:
    """Grafana gives nothing to anonymous visitors.

    Risk: anonymous access shows dashboards, metrics and data source names to anyone.
    """
    response = _plain_request(grafana, "GET", "/api/org")
    finding.observe(response.status_code, expected="401")
    finding.attach("GET /api/org without credentials", response.text[:1000])
    assert response.status_code in (401, 403), (
        f"grafana {grafana.name}: GET /api/org without credentials answered "
        f"{response.status_code} (expected 401: anonymous access off)"
    )


# --- the incident runbook's log audit ---------------------------------------------------------


@check("SEC-050", Severity.HIGH)
def test_no_signs_of_attack_in_logs(host, request, inventory, thresholds, finding) -> None:
    """No failed logins, refused access or attack patterns in the service logs of the window.

    Risk: password guessing, path traversal, SQL or script injection are the first signs of an
    attack; unnoticed, the attacker keeps trying until one works.
    """
    name = request.node.callspec.params["host"]
    logs = tuple(dict.fromkeys((*inventory.hosts[name].logs, *inventory.audit.logs)))
    if not logs:
        pytest.skip(f"{name}: no logs listed in the inventory")
    window = inventory.audit.log_window_s
    clock = host.run("date '+%s %z'")
    assert clock.rc == 0, f"{name}: cannot read the host's clock: {clock.stderr.strip()}"
    now = host_clock(clock.stdout)
    problems, total = [], 0
    for path in logs:
        tail = host.run(
            "timeout %s tail -c %s -- %s", f"{thresholds.timeout_s:g}", str(TAIL_BYTES), path
        )
        if tail.rc != 0:
            reason = tail.stderr.strip().rsplit(": ", 1)[-1] or f"exit status {tail.rc}"
            problems.append(f"{path}: cannot read: {reason} (expected a readable log)")
            continue
        data = tail.stdout_bytes
        found = suspicious_lines(
            data.decode("utf-8", "replace"), now, window, starts_mid_line=len(data) >= TAIL_BYTES
        )
        if not found:
            continue
        total += len(found)
        shown = found[-EVIDENCE_LINES:]
        more = (
            [f"... ({len(found) - len(shown)} earlier lines not shown)"]
            if found[:-EVIDENCE_LINES]
            else []
        )
        finding.attach(path, "\n".join(more + [f"[{s.kind}] {s.line}" for s in shown]))
        kinds: dict[str, int] = {}
        for line in found:
            kinds[line.kind] = kinds.get(line.kind, 0) + 1
        problems.append(f"{path}: " + ", ".join(f"{n} {k}" for k, n in kinds.items()))
    finding.observe(total, expected=0)
    assert not problems, (
        f"{name}: in the last {window:g}s: " + "; ".join(problems) + (" (expected none)")
    )


# --- image vulnerability scan -----------------------------------------------------------------

SCAN_TIMEOUT_S = 600  # a first scan downloads Trivy's database
FAILING_SEVERITIES = ("HIGH", "CRITICAL")


def _compose_images(compose_file: Path) -> list[str]:
    from opsbook import yamltext

    document = yamltext.safe_load(compose_file.read_text(encoding="utf-8")) or {}
    services = document.get("services") or {}
    return sorted(
        {str(s["image"]) for s in services.values() if isinstance(s, dict) and s.get("image")}
    )


@check("SEC-060", Severity.HIGH)
def test_images_have_no_known_vulnerabilities(inventory, finding) -> None:
    """The stack's container images have no HIGH or CRITICAL vulnerability with a fix (Trivy).

    Risk: a known, fixed vulnerability in an image is the easiest way in; exploits are public.
    """
    trivy = shutil.which("trivy")
    if trivy is None:
        pytest.skip("trivy is not installed: container images were not scanned")
    compose = inventory.compose
    if compose is None or compose.file is None:
        pytest.skip("no compose file in the inventory: no container images to scan")
    images = _compose_images(compose.file)
    if not images:
        pytest.skip(f"{compose.file}: no service names an image")
    found, failures = [], []
    for image in images:
        command = [
            trivy, "image", "--quiet", "--format", "json", "--ignore-unfixed",
            "--severity", ",".join(FAILING_SEVERITIES), "--timeout", f"{SCAN_TIMEOUT_S}s", image,
        ]  # fmt: skip
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=SCAN_TIMEOUT_S + 30, check=False
            )
            report = json.loads(done.stdout) if done.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
            failures.append(f"{image}: scan failed: {exc}")
            continue
        if report is None:
            failures.append(
                f"{image}: trivy exited {done.returncode}: {done.stderr.strip()[-200:]}"
            )
            continue
        found += [v for v in trivy_vulnerabilities(report) if v.severity in FAILING_SEVERITIES]
    finding.observe(len(found), expected=0)
    if found:
        finding.attach("vulnerabilities", "\n".join(v.line() for v in found))
    assert not failures, "trivy: " + "; ".join(failures)
    assert not found, (
        f"{len(found)} HIGH/CRITICAL vulnerabilities with a fix in "
        f"{len({v.target for v in found})} image(s), e.g. {found[0].line()}"
    )
