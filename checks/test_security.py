"""Security audit: secrets, PostgreSQL, Redis, nginx, Grafana, the incident log audit, images.

Every finding carries what was observed (the file and its mode, the pg_hba row, the ACL, the
header, the log line), redacted like everything else the plugin reports. A check that lacks
the privilege to look ends as "could not evaluate" (ERROR) and names the grant it needs.
"""

from __future__ import annotations

import pytest

from opsbook import (
    Finding,
    HostTarget,
    HttpTarget,
    Inventory,
    PostgresTarget,
    RedisTarget,
    Severity,
    Thresholds,
    Unit,
    check,
)
from opsbook.probes.disclosure import error_page, header_problems, response_headers
from opsbook.probes.files import globbed_files
from opsbook.probes.grafana import anonymous_org, default_admin_login
from opsbook.probes.images import compose_images, fixable_vulnerabilities, trivy
from opsbook.probes.postgres_security import hba_rules, role_attributes, setting
from opsbook.probes.redis_security import (
    DANGEROUS_COMMANDS,
    acl_getuser,
    checker_user,
    dangerous_commands,
    unauthenticated_ping,
)
from opsbook.probes.security import suspicious_in_logs
from opsbook.probes.tls import WEAK_TLS, accepted_tls_versions, serves_tls

pytestmark = [pytest.mark.audit, pytest.mark.security]

EVIDENCE_LINES = 20


# --- secret files -----------------------------------------------------------------------------


@check("SEC-001", Severity.HIGH)
def test_secret_files_are_private(
    host: HostTarget, inventory: Inventory, thresholds: Thresholds, finding: Finding
) -> None:
    """Secret files are mode 0600 or stricter and belong to the expected owner.

    Risk: any local user or compromised service can read a world- or group-readable .env or
    key and log in to the database or queue with it.
    """
    globs, owner = inventory.audit.secret_files, inventory.audit.secret_file_owner
    if not globs:
        pytest.skip(f"{host.name}: no secret files listed in the inventory (audit.secret_files)")
    found = globbed_files(host, globs, timeout_s=thresholds.timeout_s)
    finding.attach(
        "files (path, mode, owner)", "\n".join(f.line() for f in found.files) or "(none)"
    )
    if found.unmatched_globs:
        finding.attach("globs that matched nothing", "\n".join(found.unmatched_globs))
    problems = [
        f"{f.path} has mode {f.mode:04o} (expected 0600 or stricter)"
        for f in found.files
        if f.too_open
    ]
    problems += [
        f"{f.path} belongs to {f.owner} (expected {owner})" for f in found.files if f.owner != owner
    ]
    finding.expect_none(problems)


# --- PostgreSQL -------------------------------------------------------------------------------


@check("SEC-010", Severity.CRITICAL)
def test_postgres_has_no_trust_authentication(postgres: PostgresTarget, finding: Finding) -> None:
    """PostgreSQL has no `trust` line in pg_hba.conf.

    Risk: `trust` lets anyone who can connect log in as any role, the superuser included,
    without a password.
    """
    rules = hba_rules(postgres)
    finding.attach("pg_hba_file_rules", rules)
    problems = [r.line() for r in rules if r.auth_method == "trust"]
    problems += [f"line {r.line_number}: not loaded: {r.error}" for r in rules if r.error]
    finding.expect(
        problems, "no trust and no invalid lines", ok=not problems,
        problem="pg_hba.conf " + "; ".join(problems),
    )  # fmt: skip


@check("SEC-011", Severity.MEDIUM)
def test_postgres_hashes_passwords_with_scram(postgres: PostgresTarget, finding: Finding) -> None:
    """PostgreSQL stores new passwords as SCRAM-SHA-256.

    Risk: MD5 verifiers can be replayed as they are (pass-the-hash) and cracked quickly.
    """
    value = setting(postgres, "password_encryption")
    finding.expect(
        value, "scram-sha-256", ok=value == "scram-sha-256",
        problem=f"password_encryption is {value!r}",
    )  # fmt: skip


@check("SEC-012", Severity.HIGH)
def test_app_roles_are_not_privileged(
    postgres: PostgresTarget, inventory: Inventory, finding: Finding
) -> None:
    """The application's roles are not superuser and cannot create roles or databases.

    Risk: an SQL injection in the application becomes control of the whole server: every
    database, new roles, and (as superuser) commands on the host.
    """
    roles = inventory.audit.app_roles
    if not roles:
        pytest.skip(f"postgres {postgres.name}: no application roles listed (audit.app_roles)")
    found = {role.name: role for role in role_attributes(postgres, roles)}
    finding.attach("role attributes", list(found.values()))
    problems = [f"role {name} does not exist" for name in roles if name not in found]
    problems += [f"{r.name} has {', '.join(r.privileges)}" for r in found.values() if r.privileges]
    finding.expect(
        problems, "none of SUPERUSER, CREATEROLE, CREATEDB, REPLICATION, BYPASSRLS",
        ok=not problems, problem="; ".join(problems),
    )  # fmt: skip


@check("SEC-013", Severity.HIGH)
def test_postgres_encrypts_connections(
    postgres: PostgresTarget, inventory: Inventory, finding: Finding
) -> None:
    """PostgreSQL serves TLS when its traffic leaves the host.

    Risk: passwords' challenge-responses and every chat message cross the network in clear.
    """
    if not inventory.audit.require_ssl:
        pytest.skip(f"postgres {postgres.name}: audit.require_ssl is off (traffic stays on host)")
    value = setting(postgres, "ssl")
    finding.expect(value, "on", ok=value == "on", problem=f"ssl is {value!r}")


@check("SEC-014", Severity.LOW)
def test_postgres_logs_connections(postgres: PostgresTarget, finding: Finding) -> None:
    """PostgreSQL logs every connection.

    Risk: after an incident nobody can tell who logged in, from where, and when.
    """
    value = setting(postgres, "log_connections")
    finding.expect(value, "on", ok=value == "on", problem=f"log_connections is {value!r}")


# --- Redis ------------------------------------------------------------------------------------


@check("SEC-020", Severity.CRITICAL)
def test_redis_refuses_unauthenticated_clients(redis_target: RedisTarget, finding: Finding) -> None:
    """Redis refuses a client that has not authenticated (PING gets NOAUTH).

    Risk: anyone who reaches the port reads and rewrites the message queue, or reconfigures
    Redis to write files on the host.
    """
    ping = unauthenticated_ping(redis_target)
    finding.expect(
        ping.answer, "-NOAUTH", ok=ping.refused,
        problem=f"an unauthenticated PING answered {ping.answer!r}",
    )  # fmt: skip


@check("SEC-021", Severity.CRITICAL)
def test_redis_default_user_is_not_open(redis_target: RedisTarget, finding: Finding) -> None:
    """Redis' default user is not passwordless with every command.

    Risk: the default user is who every new connection is; `nopass +@all` gives anyone who
    reaches the port full control.
    """
    default = acl_getuser(redis_target, "default")
    finding.attach("ACL GETUSER default (without password hashes)", default.rules)
    open_flags = " ".join(default.open_to_anyone)
    finding.expect(
        open_flags or "protected", "a password or off", ok=not open_flags,
        problem=f"the default user is {open_flags}",
    )  # fmt: skip


@check("SEC-022", Severity.HIGH)
def test_redis_users_cannot_run_dangerous_commands(
    redis_target: RedisTarget, inventory: Inventory, finding: Finding
) -> None:
    """The application's and the checker's Redis users cannot run dangerous commands.

    Risk: a compromised application or a leaked checker password could flush the queue,
    rewrite the configuration, or turn Redis into a file writer on the host.
    """
    users = dict.fromkeys([*inventory.audit.redis_app_users, checker_user(redis_target)])
    users.pop("default", None)  # the admin user: SEC-021 judges it
    found = dangerous_commands(redis_target, list(users))
    shown = [
        f"{user}: {command}" for user, commands in found.allowed.items() for command in commands
    ]
    finding.attach("ACL DRYRUN allowed", "\n".join(shown) or "(none)")
    problems = [f"user {user} does not exist" for user in found.missing_users]
    problems += [
        f"{user} may run {len(commands)} of {len(DANGEROUS_COMMANDS)} dangerous commands "
        f"({'; '.join(commands[:3])}{' ...' if len(commands) > 3 else ''})"
        for user, commands in found.allowed.items()
    ]
    finding.expect_none(problems)


# --- nginx (the frontend) ---------------------------------------------------------------------


def _frontend(http_service: HttpTarget) -> HttpTarget:
    if http_service.spec.kind != "frontend":
        pytest.skip(f"{http_service.name}: not the frontend (nginx's hardening is checked there)")
    return http_service


@check("SEC-030", Severity.LOW)
def test_nginx_hides_its_version(http_service: HttpTarget, finding: Finding) -> None:
    """nginx does not tell its version (server_tokens off).

    Risk: a version number tells an attacker which known exploit to try.
    """
    page = error_page(_frontend(http_service))
    finding.attach("error page", page.page)
    disclosed = [f"Server: {page.version_in_header}"] if page.version_in_header else []
    disclosed += ["in its error page"] if page.version_in_page else []
    finding.expect(
        page.server or "(no Server header)", "no version (server_tokens off)", ok=not disclosed,
        problem=f"discloses its version: {'; '.join(disclosed)}",
    )  # fmt: skip


@check("SEC-031", Severity.MEDIUM)
def test_nginx_sends_security_headers(http_service: HttpTarget, finding: Finding) -> None:
    """nginx sends the security headers (X-Content-Type-Options, X-Frame-Options, Referrer-Policy).

    Risk: without them browsers guess content types, let other sites frame the chat
    (clickjacking) and leak chat URLs to other sites.
    """
    headers = response_headers(_frontend(http_service), "/")
    finding.attach("headers of GET /", "\n".join(f"{k}: {v}" for k, v in headers.items()))
    finding.expect_none([f"GET / {problem}" for problem in header_problems(headers)])


@check("SEC-032", Severity.HIGH)
def test_tls_protocols_are_current(http_service: HttpTarget, finding: Finding) -> None:
    """The frontend serves TLS 1.2 or newer only.

    Risk: TLS 1.0 and 1.1 have known attacks (BEAST, POODLE-style downgrades) and are
    refused by current browsers' policies.
    """
    frontend = _frontend(http_service)
    if not serves_tls(frontend):
        pytest.skip(f"{frontend.name}: {frontend.spec.url} is http: no TLS served to check")
    accepted = accepted_tls_versions(frontend)
    weak = [version for version in accepted if version in WEAK_TLS]
    finding.expect(
        accepted, "TLSv1.2 or newer only", ok=bool(accepted) and not weak,
        problem=f"accepts {', '.join(weak)}" if weak else "no TLS version was accepted",
    )  # fmt: skip


# --- Grafana ----------------------------------------------------------------------------------


@check("SEC-040", Severity.CRITICAL)
def test_grafana_refuses_default_admin_password(grafana: HttpTarget, finding: Finding) -> None:
    """Grafana refuses admin/admin.

    Risk: Grafana's first-start password is known to everyone; with it, an attacker reads
    every dashboard and data source, and data sources hold database credentials.
    """
    answer = default_admin_login(grafana)
    finding.attach("POST /login admin/admin", answer.body)
    finding.expect(
        answer.status, "401", ok=answer.status in (401, 403),
        problem=f"POST /login with admin/admin answered {answer.status}",
    )  # fmt: skip


@check("SEC-041", Severity.HIGH)
def test_grafana_has_no_anonymous_access(grafana: HttpTarget, finding: Finding) -> None:
    """Grafana gives nothing to anonymous visitors.

    Risk: anonymous access shows dashboards, metrics and data source names to anyone.
    """
    answer = anonymous_org(grafana)
    finding.attach("GET /api/org without credentials", answer.body)
    finding.expect(
        answer.status, "401: anonymous access off", ok=answer.status in (401, 403),
        problem=f"GET /api/org without credentials answered {answer.status}",
    )  # fmt: skip


# --- the incident runbook's log audit ---------------------------------------------------------


@check("SEC-050", Severity.HIGH)
def test_no_signs_of_attack_in_logs(
    host: HostTarget, inventory: Inventory, thresholds: Thresholds, finding: Finding
) -> None:
    """No failed logins, refused access or attack patterns in the service logs of the window.

    Risk: password guessing, path traversal, SQL or script injection are the first signs of an
    attack; unnoticed, the attacker keeps trying until one works.
    """
    logs = tuple(dict.fromkeys((*host.spec.logs, *inventory.audit.logs)))
    if not logs:
        pytest.skip(f"{host.name}: no logs listed in the inventory")
    window = inventory.audit.log_window_s
    audits = suspicious_in_logs(host, logs, window, timeout_s=thresholds.timeout_s)
    for audit in (a for a in audits if a.found):
        finding.attach(audit.path, audit.evidence(last=EVIDENCE_LINES))
    problems = [
        f"{a.path}: {a.unreadable} (expected a readable log)" for a in audits if a.unreadable
    ]
    problems += [f"{a.path}: {a.summary()}" for a in audits if a.found]
    finding.expect(
        sum(len(a.found) for a in audits), "none", ok=not problems, unit=Unit.COUNT,
        problem=f"in the last {window:g}s: " + "; ".join(problems),
    )  # fmt: skip


# --- image vulnerability scan -----------------------------------------------------------------

FAILING_SEVERITIES = ("HIGH", "CRITICAL")


@check("SEC-060", Severity.HIGH)
def test_images_have_no_known_vulnerabilities(inventory: Inventory, finding: Finding) -> None:
    """The stack's container images have no HIGH or CRITICAL vulnerability with a fix (Trivy).

    Risk: a known, fixed vulnerability in an image is the easiest way in; exploits are public.
    """
    program = trivy()
    if program is None:
        pytest.skip("trivy is not installed: container images were not scanned")
    compose = inventory.compose
    if compose is None or compose.file is None:
        pytest.skip("no compose file in the inventory: no container images to scan")
    images = compose_images(compose.file)
    if not images:
        pytest.skip(f"{compose.file}: no service names an image")
    found = [
        v for image in images for v in fixable_vulnerabilities(program, image, FAILING_SEVERITIES)
    ]
    if found:
        finding.attach("vulnerabilities", "\n".join(v.line() for v in found))
    finding.expect(
        len(found), "0", ok=not found, unit=Unit.COUNT,
        problem=f"{len(found)} HIGH/CRITICAL vulnerabilities with a fix in "
        f"{len({v.target for v in found})} image(s), e.g. {found[0].line() if found else ''}",
    )  # fmt: skip
