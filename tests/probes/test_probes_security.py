"""The security audit's probes against the real sandbox (PostgreSQL, Redis, nginx), a closed
port, real log files, and a `trivy` that fails (Trivy itself cannot be installed here)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from msgspec.structs import replace

from opsbook.errors import NotEvaluated, TargetUnreachable
from opsbook.inventory import Host, Inventory
from opsbook.probes.disclosure import error_page, header_problems, response_headers
from opsbook.probes.grafana import default_admin_login
from opsbook.probes.images import compose_images, fixable_vulnerabilities
from opsbook.probes.postgres_security import hba_rules, role_attributes, setting
from opsbook.probes.redis_security import (
    acl_getuser,
    checker_user,
    dangerous_commands,
    unauthenticated_ping,
)
from opsbook.probes.security import suspicious_in_logs
from opsbook.probes.tls import accepted_tls_versions, serves_tls
from opsbook.targets import HostTarget, HttpTarget, RedisTarget, Targets

LOCAL = HostTarget("local", Host())


@pytest.fixture(scope="module")
def targets(sandbox_inventory: Inventory) -> Iterator[Targets]:
    found = Targets.from_inventory(sandbox_inventory)
    yield found
    found.close()


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on: bound, then closed again."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _elsewhere(target: HttpTarget, port: int) -> HttpTarget:
    """The same endpoint, as if it served https on `port`."""
    return HttpTarget(target.name, replace(target.spec, url=f"https://127.0.0.1:{port}"), 1.0)


# --- PostgreSQL -------------------------------------------------------------------------------


def test_pg_hba_rules_settings_and_roles_of_the_sandbox(targets: Targets) -> None:
    chatdb = targets.postgres["chatdb"]
    rules = hba_rules(chatdb)
    assert rules
    assert all(rule.error is None for rule in rules)
    assert "trust" not in {rule.auth_method for rule in rules}
    assert rules[0].line().startswith(f"line {rules[0].line_number}: {rules[0].type} ")
    assert setting(chatdb, "password_encryption") == "scram-sha-256"
    (app,) = role_attributes(chatdb, ["chat_app", "no_such_role"])
    assert (app.name, app.privileges) == ("chat_app", [])
    (postgres,) = role_attributes(chatdb, ["postgres"])
    assert postgres.superuser
    assert "SUPERUSER" in postgres.privileges


# --- Redis ------------------------------------------------------------------------------------


def test_a_strangers_ping_is_refused(targets: Targets) -> None:
    ping = unauthenticated_ping(targets.redis["queue"])
    assert ping.refused
    assert ping.answer.startswith("-NOAUTH")


def test_a_strangers_ping_to_a_closed_port_is_unreachable(
    targets: Targets, closed_port: int
) -> None:
    queue = targets.redis["queue"]
    spec = replace(queue.spec, url=f"redis://127.0.0.1:{closed_port}")
    with pytest.raises(TargetUnreachable, match="refused"):
        unauthenticated_ping(RedisTarget("queue", spec, 1.0))


def test_acl_facts_as_the_checker(targets: Targets) -> None:
    queue = targets.redis["queue"]
    assert checker_user(queue) == "opsbook"
    default = acl_getuser(queue, "default")
    assert default.open_to_anyone == []  # the sandbox's default user needs a password
    assert "passwords" not in default.rules
    assert "on" in default.rules["flags"]
    found = dangerous_commands(queue, ["chat_app", "opsbook", "no-such-user"])
    assert found.allowed == {}
    assert found.missing_users == ["no-such-user"]


# --- nginx: TLS, version, headers -------------------------------------------------------------


def test_plain_http_accepts_no_tls_version(targets: Targets) -> None:
    frontend = targets.http["frontend"]
    assert not serves_tls(frontend)
    # Forced to speak TLS to nginx's http port: every handshake fails, none is accepted.
    port = int(frontend.spec.url.rsplit(":", 1)[-1].rstrip("/"))
    assert accepted_tls_versions(_elsewhere(frontend, port)) == []


def test_tls_on_a_closed_port_is_unreachable(targets: Targets, closed_port: int) -> None:
    with pytest.raises(TargetUnreachable, match=r"unreachable: http frontend"):
        accepted_tls_versions(_elsewhere(targets.http["frontend"], closed_port))


def test_the_sandbox_frontend_hides_its_version_and_sends_the_headers(targets: Targets) -> None:
    frontend = targets.http["frontend"]
    page = error_page(frontend)
    assert page.server == "nginx"
    assert page.version_in_header is None
    assert not page.version_in_page
    headers = response_headers(frontend)
    assert header_problems(headers) == []
    # Header names are case-blind, as HTTP says.
    assert header_problems({k.lower(): v for k, v in headers.items()}) == []


def test_grafana_on_a_closed_port_is_unreachable(targets: Targets, closed_port: int) -> None:
    grafana = _elsewhere(targets.http["frontend"], closed_port)
    with pytest.raises(TargetUnreachable):
        default_admin_login(grafana)


# --- the log audit ----------------------------------------------------------------------------


def test_log_audit_reads_the_hosts_logs_in_its_window(tmp_path: Path) -> None:
    now = datetime.now().astimezone()
    stamp = now.strftime("%Y-%m-%d %H:%M:%S.000 %Z")
    log = tmp_path / "postgres.log"
    log.write_text(
        f'{stamp} [7] FATAL:  password authentication failed for user "chat_app"\n'
        f"{stamp} [7] LOG:  connection authorized: user=chat_app\n"
        "2001-01-01 00:00:00.000 UTC [1] FATAL:  password authentication failed (long ago)\n"
    )
    missing = tmp_path / "missing.log"
    audits = suspicious_in_logs(LOCAL, [str(log), str(missing)], 3600, timeout_s=3)
    assert [(a.path, a.counts(), a.unreadable) for a in audits] == [
        (str(log), {"failed login": 1}, None),
        (str(missing), {}, "cannot read: No such file or directory"),
    ]


# --- image scan -------------------------------------------------------------------------------


def test_images_of_a_compose_file(tmp_path: Path) -> None:
    compose = tmp_path / "compose.yaml"
    services = {"web": {"image": "nginx:1.25.3"}, "db": {"image": "postgres:16"}, "x": {}}
    compose.write_text(yaml.safe_dump({"services": services}))
    assert compose_images(compose) == ["nginx:1.25.3", "postgres:16"]


def test_a_failing_trivy_is_not_evaluated(tmp_path: Path) -> None:
    fake = tmp_path / "trivy"
    fake.write_text("#!/bin/sh\necho 'FATAL image scan error: no such image' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(NotEvaluated, match=r"^trivy: nginx:0: trivy exited 1: FATAL image scan"):
        fixable_vulnerabilities(str(fake), "nginx:0", ("HIGH", "CRITICAL"), timeout_s=5)
