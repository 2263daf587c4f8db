"""The security and access audit (`-m audit`): every check fails on a really weakened target,
with its message and evidence, and passes again once the target is restored.

Grafana and Trivy cannot be installed here. Grafana's checks run against a loopback server
that answers as Grafana 10's API does (the bodies of its /login and /api/org answers, written
from Grafana's API documentation, not captured from a running Grafana); Trivy's check runs a
fake `trivy` on PATH that prints a report in the shape of `trivy image --format json`
(schema version 2), equally written by hand. nginx's TLS (SEC-032) is the sandbox's own TLS
listener (tests/test_sandbox_audit.py); the container checks run on the compose stack
(tests/checks/test_container_security.py).
"""

from __future__ import annotations

import http.client
import json
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import yaml
from support import RunChecks

from opsbook.sandbox.audit_defaults import ensure_env_file
from opsbook.sandbox.insecure import make_insecure, make_secure
from opsbook.sandbox.stack import Stack
from opsbook.sandbox.tls import make_self_signed

pytestmark = pytest.mark.sandbox

AUDIT_CHECKS = {
    "SEC-001", "SEC-010", "SEC-011", "SEC-012", "SEC-013", "SEC-014", "SEC-020", "SEC-021",
    "SEC-022", "SEC-030", "SEC-031", "SEC-032", "SEC-040", "SEC-041", "SEC-050", "SEC-060",
    "ACCESS-001", "ACCESS-002", "ACCESS-003", "ACCESS-004",
}  # fmt: skip


def admin_redis(stack: Stack) -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1", port=stack.state.ports["redis"], username="default",
        password=(stack.dir / "secrets" / "redis-default.password").read_text().strip(),
        socket_timeout=3, decode_responses=True,
    )  # fmt: skip


def grant_audit_privileges(stack: Stack) -> None:
    """What the sandbox's provisioning is asked to grant (see the report); idempotent, and a
    no-op once postgres.py and redis.py carry it. Redone before each run: a restart of Redis
    rewrites its users from redis.py."""
    stack.component("postgres").psql(
        "GRANT SELECT ON pg_hba_file_rules TO opsbook_monitor;\n"
        "GRANT EXECUTE ON FUNCTION pg_hba_file_rules() TO opsbook_monitor;\n",
        database="chatdb",
    )
    with admin_redis(stack) as client:
        client.execute_command("ACL", "SETUSER", "opsbook", "+acl|getuser", "+acl|dryrun")
        client.execute_command("ACL", "SETUSER", "chat_app", "-@dangerous")


def audit_inventory(stack: Stack, path: Path, **audit: Any) -> Path:
    """The sandbox's inventory with its audit section and the logs the log audit reads."""
    grant_audit_privileges(stack)
    ensure_env_file(stack.dir)
    inventory = yaml.safe_load(stack.inventory_path.read_text())
    inventory["audit"] = {**inventory["audit"], **audit}
    path.write_text(yaml.safe_dump(inventory))
    return path


@pytest.fixture
def inventory_path(sandbox: Stack, tmp_path: Path) -> Path:
    return audit_inventory(sandbox, tmp_path / "inventory.yaml")


def test_default_sandbox_passes_the_audit(inventory_path: Path, run_checks: RunChecks) -> None:
    run = run_checks("-m", "audit", inventory=inventory_path)
    assert run.exit_code == 0, run.output
    # Other modules may add audit checks (the compose stack's): only these are judged here.
    outcomes = {key: v for key, v in run.outcomes().items() if key[0] in AUDIT_CHECKS}
    assert {check for check, _ in outcomes} == AUDIT_CHECKS
    skipped = {key for key, outcome in outcomes.items() if outcome == "skipped"}
    assert skipped == {
        ("SEC-030", "backend"), ("SEC-031", "backend"), ("SEC-032", "backend"),
        ("SEC-032", "frontend"),  # http: no TLS to check
        ("SEC-040", "none"), ("SEC-041", "none"),  # no Grafana in the sandbox
        ("SEC-060", None),  # trivy is not installed
    }, run.output  # fmt: skip
    assert run.row("SEC-060")["outcome"] == "skipped"
    assert run.row("SEC-060")["message"] == (
        "trivy is not installed: container images were not scanned"
    )
    assert "is http: no TLS served to check" in run.row("SEC-032", "frontend")["message"]


@pytest.mark.breaks("SEC-001", "SEC-010", "SEC-020", "SEC-021", "SEC-030", "ACCESS-003")
def test_insecure_variant_fails_each_matching_check(
    fresh_sandbox: Stack, run_checks: RunChecks, tmp_path: Path
) -> None:
    inventory = audit_inventory(fresh_sandbox, tmp_path / "inventory.yaml")
    make_insecure(fresh_sandbox)
    try:
        run = run_checks("-m", "audit", inventory=inventory)
    finally:
        make_secure(fresh_sandbox)
    failed = {key for key, outcome in run.outcomes().items() if outcome == "failed"}
    redis_port = fresh_sandbox.state.ports["redis"]
    assert failed == {
        ("SEC-001", "local"),  # world-readable .env
        ("SEC-010", "chatdb"),  # trust
        ("SEC-020", "queue"),  # no password
        ("SEC-021", "queue"),
        ("SEC-030", "frontend"),  # server_tokens on
        ("SEC-030", "frontend-tls"),  # the same nginx server, over TLS
        ("ACCESS-003", "local"),  # Redis on 0.0.0.0
    }, run.output
    env = str(fresh_sandbox.dir / ".env")
    assert run.row("SEC-001")["message"] == (
        f"host local: {env} has mode 0644 (expected 0600 or stricter)"
    )
    assert f"{env} mode 0644 owner" in run.row("SEC-001")["evidence"]["files (path, mode, owner)"]
    assert run.row("SEC-010")["message"] == (
        "postgres chatdb: pg_hba.conf line 1: local all all trust; "
        "line 2: host all all 127.0.0.1 trust (expected no trust and no invalid lines)"
    )
    assert '"trust"' in run.row("SEC-010")["evidence"]["pg_hba_file_rules"]
    assert run.row("SEC-020")["message"] == (
        "redis queue: an unauthenticated PING answered '+PONG' (expected -NOAUTH)"
    )
    assert run.row("SEC-021")["message"] == (
        "redis queue: the default user is on nopass +@all (expected a password or off)"
    )
    assert (
        "nopass" in run.row("SEC-021")["evidence"]["ACL GETUSER default (without password hashes)"]
    )
    assert run.row("SEC-030", "frontend")["message"].startswith(
        "frontend: discloses its version: Server: nginx/1."
    )
    assert run.row("ACCESS-003")["message"] == (
        f"host local: bound to all interfaces: redis queue (0.0.0.0:{redis_port}) "
        "(expected a specific address, e.g. 127.0.0.1)"
    )
    assert "redis-server" in run.row("ACCESS-003")["evidence"]["sockets of the stack"]

    again = run_checks("-m", "audit", inventory=inventory)
    assert again.exit_code == 0, again.output


def _run_one(run_checks: RunChecks, check_id: str, inventory: Path, **kw: Any) -> Any:
    return run_checks("-m", "audit", f"--check={check_id}", inventory=inventory, **kw)


@pytest.mark.breaks("SEC-001")
def test_open_secret_file_and_wrong_owner_fail(
    sandbox: Stack, inventory_path: Path, run_checks: RunChecks
) -> None:
    secret = sandbox.dir / "secrets" / "chat_app.password"
    secret.chmod(0o640)
    os.chown(secret, pwd.getpwnam("nobody").pw_uid, -1)
    try:
        run = _run_one(run_checks, "SEC-001", inventory_path)
    finally:
        secret.chmod(0o600)
        os.chown(secret, os.geteuid(), -1)
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert run.row("SEC-001")["message"] == (
        f"host local: {secret} has mode 0640 (expected 0600 or stricter); "
        f"{secret} belongs to nobody (expected {me})"
    )
    assert (
        f"{secret} mode 0640 owner nobody"
        in run.row("SEC-001")["evidence"]["files (path, mode, owner)"]
    )
    assert _run_one(run_checks, "SEC-001", inventory_path).exit_code == 0


@pytest.mark.breaks("SEC-011", "SEC-012", "SEC-013", "SEC-014")
def test_weak_postgres_settings_fail(
    sandbox: Stack, inventory_path: Path, run_checks: RunChecks
) -> None:
    postgres = sandbox.component("postgres")
    postgres.psql(
        "ALTER SYSTEM SET password_encryption = 'md5';\n"
        "ALTER SYSTEM SET log_connections = off;\n"
        "ALTER SYSTEM SET ssl = off;\n"
        "SELECT pg_reload_conf();\n"
    )
    postgres.psql("ALTER ROLE chat_app CREATEDB CREATEROLE;")
    try:
        run = run_checks(
            "-m", "audit", "--check=SEC-011,SEC-012,SEC-013,SEC-014", inventory=inventory_path
        )
    finally:
        postgres.psql("ALTER ROLE chat_app NOCREATEDB NOCREATEROLE;")
        postgres.psql(
            "ALTER SYSTEM RESET password_encryption;\n"
            "ALTER SYSTEM RESET log_connections;\n"
            "ALTER SYSTEM RESET ssl;\n"
            "SELECT pg_reload_conf();\n"
        )
    assert run.row("SEC-011")["message"] == (
        "postgres chatdb: password_encryption is 'md5' (expected scram-sha-256)"
    )
    assert run.row("SEC-012")["message"] == (
        "postgres chatdb: chat_app has CREATEROLE, CREATEDB (expected none of SUPERUSER, "
        "CREATEROLE, CREATEDB, REPLICATION, BYPASSRLS)"
    )
    assert '"chat_app"' in next(iter(run.row("SEC-012")["evidence"].values()))
    assert run.row("SEC-013")["message"] == "postgres chatdb: ssl is 'off' (expected on)"
    assert run.row("SEC-014")["message"] == (
        "postgres chatdb: log_connections is 'off' (expected on)"
    )
    again = run_checks(
        "-m", "audit", "--check=SEC-011,SEC-012,SEC-013,SEC-014", inventory=inventory_path
    )
    assert again.exit_code == 0, again.output
    assert again.outcome("SEC-013") == "passed"  # the sandbox's PostgreSQL serves TLS
    off = run_checks(
        "-m", "audit", "--check=SEC-013", inventory=inventory_path,
        env={"OPSBOOK__AUDIT__REQUIRE_SSL": "false"},
    )  # fmt: skip
    assert off.outcome("SEC-013") == "skipped"  # traffic said to stay on the host


def test_missing_privileges_are_could_not_evaluate(
    sandbox: Stack, inventory_path: Path, run_checks: RunChecks
) -> None:
    sandbox.component("postgres").psql(
        "REVOKE SELECT ON pg_hba_file_rules FROM opsbook_monitor;\n"
        "REVOKE EXECUTE ON FUNCTION pg_hba_file_rules() FROM opsbook_monitor;\n",
        database="chatdb",
    )
    with admin_redis(sandbox) as client:
        client.execute_command("ACL", "SETUSER", "opsbook", "-acl|dryrun")
    try:
        run = run_checks("-m", "audit", "--check=SEC-010,SEC-021", inventory=inventory_path)
    finally:
        grant_audit_privileges(sandbox)
    assert run.exit_code == 10, run.output
    assert run.outcome("SEC-010") == run.outcome("SEC-021") == "error"
    assert run.row("SEC-010")["message"] == (
        "postgres chatdb: opsbook_monitor may not read pg_hba_file_rules "
        "(superuser only by default); grant it: GRANT SELECT ON pg_hba_file_rules TO "
        "opsbook_monitor; GRANT EXECUTE ON FUNCTION pg_hba_file_rules() TO opsbook_monitor "
        "(in the checked database)"
    )
    assert run.row("SEC-021")["message"] == (
        "redis queue: the checker user opsbook may not run 'acl|dryrun'; "
        "grant it: ACL SETUSER opsbook +acl|getuser +acl|dryrun"
    )


@pytest.mark.breaks("SEC-022")
def test_app_user_with_dangerous_commands_fails(
    sandbox: Stack, inventory_path: Path, run_checks: RunChecks
) -> None:
    with admin_redis(sandbox) as client:
        client.execute_command("ACL", "SETUSER", "chat_app", "+flushall", "+config|set")
        try:
            run = _run_one(run_checks, "SEC-022", inventory_path)
        finally:
            client.execute_command("ACL", "SETUSER", "chat_app", "-flushall", "-config|set")
    assert run.row("SEC-022")["message"] == (
        "redis queue: chat_app may run 2 of 12 dangerous commands "
        "(FLUSHALL; CONFIG SET dir /var/tmp)"
    )
    assert "chat_app: FLUSHALL" in run.row("SEC-022")["evidence"]["ACL DRYRUN allowed"]
    assert _run_one(run_checks, "SEC-022", inventory_path).exit_code == 0


def _reload_nginx(stack: Stack) -> None:
    home = stack.dir / "nginx"
    subprocess.run(
        ["nginx", "-p", f"{home}/", "-c", str(home / "nginx.conf"), "-s", "reload"],
        check=True, capture_output=True, timeout=10,
    )  # fmt: skip
    time.sleep(0.5)  # new workers take over asynchronously


@pytest.mark.breaks("SEC-031")
def test_missing_security_header_fails(
    sandbox: Stack, inventory_path: Path, run_checks: RunChecks
) -> None:
    config = sandbox.dir / "nginx" / "nginx.conf"
    original = config.read_text()
    config.write_text(original.replace("add_header X-Frame-Options DENY always;", ""))
    _reload_nginx(sandbox)
    try:
        run = _run_one(run_checks, "SEC-031", inventory_path)
    finally:
        config.write_text(original)
        _reload_nginx(sandbox)
    assert run.row("SEC-031", "frontend")["message"] == "frontend: GET / X-Frame-Options: missing"
    assert (
        "Referrer-Policy: no-referrer"
        in run.row("SEC-031", "frontend")["evidence"]["headers of GET /"]
    )
    assert _run_one(run_checks, "SEC-031", inventory_path).exit_code == 0


# Grafana 10's answers (from its HTTP API documentation): POST /login and GET /api/org.
GRAFANA_LOGIN_REFUSED = (
    401,
    {
        "message": "Invalid username or password",
        "messageId": "password-auth.failed",
        "statusCode": 401,
        "traceID": "",
    },
)
GRAFANA_LOGIN_OK = (200, {"message": "Logged in", "redirectUrl": "/"})
GRAFANA_UNAUTHORIZED = (
    401,
    {
        "extra": None,
        "message": "Unauthorized",
        "messageId": "auth.unauthorized",
        "statusCode": 401,
        "traceID": "",
    },
)
GRAFANA_ANONYMOUS_ORG = (
    200,
    {
        "id": 1,
        "name": "Main Org.",
        "address": {
            "address1": "",
            "address2": "",
            "city": "",
            "zipCode": "",
            "state": "",
            "country": "",
        },
    },
)


@contextmanager
def grafana_server(tls: tuple[Path, Path] | None = None) -> Iterator[tuple[str, dict[str, bool]]]:
    """A loopback server answering as Grafana (it cannot be installed here), over https with
    `tls` (certificate, key)."""
    weak = {"default_admin": False, "anonymous": False}

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            sent = json.loads(self.rfile.read(length) or b"{}")
            admin = sent == {"user": "admin", "password": "admin"}
            if self.path == "/login":
                self._answer(
                    *(
                        GRAFANA_LOGIN_OK
                        if admin and weak["default_admin"]
                        else GRAFANA_LOGIN_REFUSED
                    )
                )
            else:
                self._answer(404, {"message": "Not found"})

        def do_GET(self) -> None:
            if self.path == "/api/org":
                anonymous = "Authorization" not in self.headers and weak["anonymous"]
                self._answer(*(GRAFANA_ANONYMOUS_ORG if anonymous else GRAFANA_UNAUTHORIZED))
            elif self.path == "/api/health":
                self._answer(200, {"database": "ok"})
            else:
                self._answer(404, {"message": "Not found"})

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    scheme = "https" if tls else "http"
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}", weak
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def grafana_replay() -> Iterator[tuple[str, dict[str, bool]]]:
    with grafana_server() as replay:
        yield replay


@pytest.mark.breaks("SEC-040", "SEC-041")
def test_grafana_default_password_and_anonymous_access_fail(
    sandbox: Stack, run_checks: RunChecks, grafana_replay: tuple[str, dict[str, bool]],
    tmp_path: Path,
) -> None:  # fmt: skip
    url, weak = grafana_replay
    inventory = yaml.safe_load(audit_inventory(sandbox, tmp_path / "base.yaml").read_text())
    inventory["http"]["grafana"] = {"kind": "grafana", "url": url, "health_path": "/api/health"}
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(inventory))
    ok = run_checks("-m", "audit", "--check=SEC-040,SEC-041", inventory=path)
    assert ok.exit_code == 0, ok.output
    weak.update(default_admin=True, anonymous=True)
    run = run_checks("-m", "audit", "--check=SEC-040,SEC-041", inventory=path)
    assert run.row("SEC-040", "grafana")["message"] == (
        "grafana grafana: POST /login with admin/admin answered 200 (expected 401)"
    )
    assert "Logged in" in run.row("SEC-040", "grafana")["evidence"]["POST /login admin/admin"]
    assert run.row("SEC-041", "grafana")["message"] == (
        "grafana grafana: GET /api/org without credentials answered 200 "
        "(expected 401: anonymous access off)"
    )
    assert (
        "Main Org." in run.row("SEC-041", "grafana")["evidence"]["GET /api/org without credentials"]
    )
    weak.update(default_admin=False, anonymous=False)
    assert run_checks("-m", "audit", "--check=SEC-040,SEC-041", inventory=path).exit_code == 0


def test_grafana_behind_its_own_ca_is_asked_with_its_ca_file(
    sandbox: Stack, run_checks: RunChecks, tmp_path: Path
) -> None:
    """Grafana's https entry signed by a CA of the deployment's own (`ca_file`): a stranger's
    requests (SEC-040, SEC-041) trust that CA, as every other request to the entry does."""
    certificate, key = tmp_path / "grafana.pem", tmp_path / "grafana.key"
    make_self_signed(certificate, key, "grafana")
    inventory = yaml.safe_load(audit_inventory(sandbox, tmp_path / "base.yaml").read_text())
    path = tmp_path / "inventory.yaml"
    with grafana_server((certificate, key)) as (url, _):
        inventory["http"]["grafana"] = {
            "kind": "grafana", "url": url, "health_path": "/api/health",
            "ca_file": str(certificate),
        }  # fmt: skip
        path.write_text(yaml.safe_dump(inventory))
        run = run_checks("-m", "audit", "--check=SEC-040,SEC-041", inventory=path)
    assert run.exit_code == 0, run.output
    assert run.outcome("SEC-040", "grafana") == "passed"


def _raw_get(port: int, path: str) -> int:
    """A request whose path is sent as written (requests would normalise `../`)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)
        connection.endheaders()
        return connection.getresponse().status
    finally:
        connection.close()


def _failed_login(stack: Stack, user: str) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            host="127.0.0.1", port=stack.state.ports["postgres"], dbname="chatdb",
            user=user, password="not-the-password", connect_timeout=3,
            # One attempt: libpq's default (prefer) tries again without TLS after a failed
            # login over TLS, and the log would hold two lines for one client.
            sslmode="require",
        )  # fmt: skip


@pytest.mark.breaks("SEC-050")
def test_log_audit_finds_failed_logins_and_attacks(
    fresh_sandbox: Stack, run_checks: RunChecks, tmp_path: Path
) -> None:
    """A fresh sandbox: the lines stay in the log audit's window (a day) once written."""
    inventory = audit_inventory(fresh_sandbox, tmp_path / "inventory.yaml")
    assert _run_one(run_checks, "SEC-050", inventory).exit_code == 0
    _failed_login(fresh_sandbox, "chat_app")
    port = fresh_sandbox.state.ports["nginx"]
    _raw_get(port, "/static/../../etc/passwd")
    _raw_get(port, "/search?q=1%20UNION%20SELECT%20password%20FROM%20users")
    _raw_get(port, "/?q=<script>alert(1)</script>")
    time.sleep(0.2)  # nginx writes its access log line after answering
    run = _run_one(run_checks, "SEC-050", inventory)
    row = run.row("SEC-050", "local")
    assert row["outcome"] == "failed"
    postgres_log = str(fresh_sandbox.dir / "logs" / "postgres.log")
    access_log = str(fresh_sandbox.dir / "nginx" / "logs" / "access.log")
    error_log = str(fresh_sandbox.dir / "nginx" / "logs" / "error.log")
    # nginx's error log names the traversal too (it refuses the path above its root).
    assert row["message"] == (
        f"host local: in the last 86400s: {error_log}: 1 path traversal; "
        f"{postgres_log}: 1 failed login; "
        f"{access_log}: 1 path traversal, 1 sql injection, 1 script injection (expected none)"
    )
    assert 'password authentication failed for user "chat_app"' in row["evidence"][postgres_log]
    assert "[sql injection]" in row["evidence"][access_log]
    assert row["observed"] == 5
    # Restored: once the lines are older than the window, the audit passes again.
    time.sleep(1.1)
    window = {"OPSBOOK__AUDIT__LOG_WINDOW_S": "1"}
    assert _run_one(run_checks, "SEC-050", inventory, env=window).exit_code == 0


FAKE_TRIVY_REPORT = {
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
                    "Status": "fixed",
                    "Severity": "HIGH",
                }
            ],
        }
    ],
}


@pytest.mark.breaks("SEC-060")
def test_image_scan_skips_without_trivy_and_runs_it_when_present(
    sandbox: Stack, run_checks: RunChecks, tmp_path: Path
) -> None:
    """Trivy cannot be installed here: a fake `trivy` prints a report shaped like the real
    `trivy image --format json` output (written by hand, not captured)."""
    assert shutil.which("trivy") is None
    compose = tmp_path / "compose.yaml"
    compose.write_text(yaml.safe_dump({"services": {"nginx": {"image": "nginx:1.25.3"}}}))
    inventory = yaml.safe_load(audit_inventory(sandbox, tmp_path / "base.yaml").read_text())
    inventory["compose"] = {"project": "chat", "file": str(compose)}
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(inventory))

    skipped = _run_one(run_checks, "SEC-060", path)
    assert skipped.exit_code == 0
    assert skipped.row("SEC-060")["outcome"] == "skipped"
    assert skipped.row("SEC-060")["message"] == (
        "trivy is not installed: container images were not scanned"
    )

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    report = tmp_path / "trivy.json"
    calls = tmp_path / "trivy-calls.txt"
    fake = bin_dir / "trivy"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\ncat {report}\n')
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    report.write_text(json.dumps(FAKE_TRIVY_REPORT))
    run = _run_one(run_checks, "SEC-060", path, env=env)
    assert run.row("SEC-060")["message"] == (
        "sandbox: 1 HIGH/CRITICAL vulnerabilities with a fix in 1 image(s), e.g. HIGH "
        "CVE-2024-2511 libssl3 3.0.11-1~deb12u2 (fixed in 3.0.13-1~deb12u1) in nginx:1.25.3 "
        "(debian 12.4) (expected 0)"
    )
    assert calls.read_text().split()[0] == "image"
    assert calls.read_text().split()[-1] == "nginx:1.25.3"
    report.write_text(json.dumps({**FAKE_TRIVY_REPORT, "Results": []}))
    assert _run_one(run_checks, "SEC-060", path, env=env).exit_code == 0


@pytest.mark.breaks("ACCESS-001")
def test_unexpected_login_shell_fails(inventory_path: Path, run_checks: RunChecks) -> None:
    intruder = "opsbook-audit-intruder"
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/bin/bash", intruder],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    try:
        uid = pwd.getpwnam(intruder).pw_uid
        run = _run_one(run_checks, "ACCESS-001", inventory_path)
    finally:
        subprocess.run(["userdel", intruder], check=True, capture_output=True, timeout=30)
    message = run.row("ACCESS-001", "local")["message"]
    assert message.startswith(
        f"host local: unexpected login shell for {intruder} uid={uid} shell=/bin/bash "
        "(expected only "
    )
    assert intruder in run.row("ACCESS-001", "local")["evidence"]["accounts with a login shell"]
    assert _run_one(run_checks, "ACCESS-001", inventory_path).exit_code == 0


@pytest.mark.breaks("ACCESS-002")
def test_service_account_with_a_shell_fails(inventory_path: Path, run_checks: RunChecks) -> None:
    original = pwd.getpwnam("nobody").pw_shell
    subprocess.run(["usermod", "--shell", "/bin/bash", "nobody"], check=True, timeout=30)
    try:
        run = _run_one(run_checks, "ACCESS-002", inventory_path)
    finally:
        subprocess.run(["usermod", "--shell", original, "nobody"], check=True, timeout=30)
    assert run.row("ACCESS-002", "local")["message"] == (
        "host local: service account nobody uid=65534 shell=/bin/bash can log in"
    )
    assert _run_one(run_checks, "ACCESS-002", inventory_path).exit_code == 0


@pytest.mark.breaks("ACCESS-004")
def test_new_listener_on_all_interfaces_fails(inventory_path: Path, run_checks: RunChecks) -> None:
    # Binding 0.0.0.0 only listens on this machine's addresses; nothing is sent anywhere.
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        run = _run_one(run_checks, "ACCESS-004", inventory_path)
    message = run.row("ACCESS-004", "local")["message"]
    assert message.startswith(
        f"host local: listening on all interfaces: 0.0.0.0:{port} (expected only "
    )
    assert (
        f"0.0.0.0:{port}" in run.row("ACCESS-004", "local")["evidence"]["sockets on all interfaces"]
    )
    assert _run_one(run_checks, "ACCESS-004", inventory_path).exit_code == 0


CANARY = "canary-Audit-5b4e3c2d1a"


def test_canary_secret_reaches_no_output(
    fresh_sandbox: Stack, run_checks: RunChecks, tmp_path: Path
) -> None:
    """The monitoring role's password is a canary; failing checks hold it in their locals
    (the target's spec) and in their evidence (an access log line), with --showlocals."""
    fresh_sandbox.component("postgres").psql(f"ALTER ROLE opsbook_monitor PASSWORD '{CANARY}';")
    secret = tmp_path / "monitor.password"
    secret.write_text(CANARY + "\n")
    secret.chmod(0o600)
    inventory = yaml.safe_load(audit_inventory(fresh_sandbox, tmp_path / "base.yaml").read_text())
    inventory["postgres"]["chatdb"]["password"] = {"file": str(secret)}
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(inventory))
    _raw_get(fresh_sandbox.state.ports["nginx"], f"/?q=<script>{CANARY}</script>")
    time.sleep(0.2)
    make_insecure(fresh_sandbox)
    reports = tmp_path / "reports"
    try:
        run = run_checks(
            "-m", "audit", "--showlocals", "-rA", "--tb=long", inventory=path, reports=reports
        )
    finally:
        make_secure(fresh_sandbox)
    assert run.exit_code == 1
    assert run.outcome("SEC-010") == run.outcome("SEC-050") == "failed"
    assert run.outcome("SEC-011") == "passed"  # the canary did log in
    assert CANARY not in run.output
    assert (
        "***"
        in run.row("SEC-050")["evidence"][str(fresh_sandbox.dir / "nginx" / "logs" / "access.log")]
    )
    written = [p for p in reports.rglob("*") if p.is_file()]
    assert {"report.html", "junit.xml", "findings.json"} <= {p.name for p in written}
    for report in written:
        assert CANARY not in report.read_text(errors="replace"), report
