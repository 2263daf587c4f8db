"""Access control audit: who can log in to the hosts, and what listens on which interface."""

from __future__ import annotations

import pytest

from opsbook import Finding, HostTarget, Inventory, Severity, Thresholds, check
from opsbook.probes.accounts import local_accounts
from opsbook.probes.sockets import internal_ports, listening_sockets

pytestmark = [pytest.mark.audit, pytest.mark.access]


@check("ACCESS-001", Severity.HIGH)
def test_only_expected_accounts_have_a_login_shell(
    host: HostTarget, inventory: Inventory, thresholds: Thresholds, finding: Finding
) -> None:
    """Only the expected accounts have a login shell.

    Risk: a service or stray account with a shell is a way in that nobody watches; an attacker
    who learns its password, or plants a key, gets a shell on the host.
    """
    allowed = sorted(inventory.audit.login_users)
    can_log_in = [a for a in local_accounts(host, timeout_s=thresholds.timeout_s) if a.can_log_in]
    finding.attach("accounts with a login shell", "\n".join(a.line() for a in can_log_in))
    unexpected = [a.line() for a in can_log_in if a.name not in allowed]
    finding.expect(
        sorted(a.name for a in can_log_in), f"only {', '.join(allowed)}", ok=not unexpected,
        problem=f"unexpected login shell for {', '.join(unexpected)}",
    )  # fmt: skip


@check("ACCESS-002", Severity.CRITICAL)
def test_service_accounts_are_as_expected(
    host: HostTarget, inventory: Inventory, thresholds: Thresholds, finding: Finding
) -> None:
    """Only root has UID 0, and the service accounts exist without a login shell.

    Risk: a second UID 0 account is root under another name; a missing service account means
    the service runs as someone else (often root); a service account with a shell can be
    logged into.
    """
    everyone = {a.name: a for a in local_accounts(host, timeout_s=thresholds.timeout_s)}
    expected, login_users = inventory.audit.service_accounts, inventory.audit.login_users
    shown = [a.line() for a in everyone.values() if a.uid == 0 or a.name in expected]
    finding.attach("root, UID 0 and service accounts", "\n".join(shown))
    problems = [
        f"{a.line()} has UID 0" for a in everyone.values() if a.uid == 0 and a.name != "root"
    ]
    problems += [
        f"service account {name} does not exist" for name in expected if name not in everyone
    ]
    problems += [
        f"service account {everyone[name].line()} can log in"
        for name in expected
        if name in everyone and everyone[name].can_log_in and name not in login_users
    ]
    finding.expect_none(problems)


@check("ACCESS-003", Severity.CRITICAL)
def test_data_services_are_not_published(
    host: HostTarget, inventory: Inventory, thresholds: Thresholds, finding: Finding
) -> None:
    """PostgreSQL, Redis, the backend, Prometheus and Grafana are not bound to all interfaces.

    Risk: anyone who can reach the host can try the database's and the queue's passwords, read
    every metric, and reach Prometheus, which has no authentication of its own.
    """
    internal = internal_ports(inventory, host)
    if not internal:
        pytest.skip(
            f"{host.name}: no PostgreSQL, Redis or internal HTTP target of the inventory on it"
        )
    mine = [
        s for s in listening_sockets(host, timeout_s=thresholds.timeout_s) if s.port in internal
    ]
    finding.attach("sockets of the stack", "\n".join(s.line for s in mine) or "(none listening)")
    exposed = sorted(f"{internal[s.port]} ({s.address}:{s.port})" for s in mine if s.all_interfaces)
    finding.expect(
        exposed, "a specific address, e.g. 127.0.0.1", ok=not exposed,
        problem=f"bound to all interfaces: {', '.join(exposed)}",
    )  # fmt: skip


@check("ACCESS-004", Severity.MEDIUM)
def test_only_public_ports_listen_on_all_interfaces(
    host: HostTarget, inventory: Inventory, thresholds: Thresholds, finding: Finding
) -> None:
    """Nothing but the public ports listens on all interfaces.

    Risk: a debug server, an admin console or a forgotten service open to the network is an
    unwatched way in. (The stack's own internal services are judged by ACCESS-003.)
    """
    public, internal = set(inventory.audit.public_ports), internal_ports(inventory, host)
    everything = [
        s for s in listening_sockets(host, timeout_s=thresholds.timeout_s) if s.all_interfaces
    ]
    finding.attach("sockets on all interfaces", "\n".join(s.line for s in everything) or "(none)")
    unexpected = sorted(
        {f"{s.address}:{s.port}" for s in everything if s.port not in public | set(internal)}
    )
    finding.expect(
        unexpected, f"only {', '.join(map(str, sorted(public))) or 'none'} on all interfaces",
        ok=not unexpected, problem=f"listening on all interfaces: {', '.join(unexpected)}",
    )  # fmt: skip
