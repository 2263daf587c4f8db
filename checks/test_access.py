"""Access control audit: who can log in to the hosts, and what listens on which interface."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import pytest

from opsbook import Severity, check
from opsbook.inventory import Inventory
from opsbook.probes.security import accounts, listeners

pytestmark = [pytest.mark.audit, pytest.mark.access]

# Kinds of HTTP endpoint that sit behind nginx and must never be published themselves.
INTERNAL_HTTP_KINDS = ("backend", "prometheus", "grafana")
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}


def _passwd(host, name: str) -> str:
    passwd = host.run("cat /etc/passwd")
    assert passwd.rc == 0, f"{name}: cannot read /etc/passwd: {passwd.stderr.strip()}"
    return str(passwd.stdout)


@check("ACCESS-001", Severity.HIGH)
def test_only_expected_accounts_have_a_login_shell(host, request, inventory, finding) -> None:
    """Only the expected accounts have a login shell.

    Risk: a service or stray account with a shell is a way in that nobody watches; an attacker
    who learns its password, or plants a key, gets a shell on the host.
    """
    name = request.node.callspec.params["host"]
    allowed = set(inventory.audit.login_users)
    can_log_in = [a for a in accounts(_passwd(host, name)) if a.can_log_in]
    unexpected = [a for a in can_log_in if a.name not in allowed]
    finding.observe(sorted(a.name for a in can_log_in), expected=sorted(allowed))
    finding.attach("accounts with a login shell", "\n".join(a.line() for a in can_log_in))
    assert not unexpected, (
        f"{name}: unexpected login shell for "
        + ", ".join(a.line() for a in unexpected)
        + f" (allowed: {', '.join(sorted(allowed))})"
    )


@check("ACCESS-002", Severity.CRITICAL)
def test_service_accounts_are_as_expected(host, request, inventory, finding) -> None:
    """Only root has UID 0, and the service accounts exist without a login shell.

    Risk: a second UID 0 account is root under another name; a missing service account means
    the service runs as someone else (often root); a service account with a shell can be
    logged into.
    """
    name = request.node.callspec.params["host"]
    everyone = {a.name: a for a in accounts(_passwd(host, name))}
    problems = [
        f"{a.line()} has UID 0" for a in everyone.values() if a.uid == 0 and a.name != "root"
    ]
    expected = inventory.audit.service_accounts
    allowed_shells = set(inventory.audit.login_users)
    for account in expected:
        if account not in everyone:
            problems.append(f"service account {account} does not exist")
        elif everyone[account].can_log_in and account not in allowed_shells:
            problems.append(f"service account {everyone[account].line()} can log in")
    finding.observe(len(problems), expected=0)
    shown = [a for a in everyone.values() if a.uid == 0 or a.name in expected]
    finding.attach("root, UID 0 and service accounts", "\n".join(a.line() for a in shown))
    assert not problems, f"{name}: " + "; ".join(problems)


def _machine_names() -> set[str]:
    return {*LOOPBACK_NAMES, socket.gethostname(), socket.getfqdn()}


def _on_host(address: str | None, spec: str) -> bool:
    """Whether a target at `address` listens on the host of testinfra spec `spec`."""
    if not address:
        return False
    if spec.startswith("local://"):
        return address in _machine_names()
    return address == urlsplit(spec).hostname


def _stack_ports(inventory: Inventory, spec: str) -> dict[int, str]:
    """The ports on this host of the services that must not be published, by port."""
    ports: dict[int, str] = {}
    for name, pg in inventory.postgres.items():
        if _on_host(pg.host, spec):
            ports[pg.port] = f"postgres {name}"
    for name, rd in inventory.redis.items():
        parts = urlsplit(rd.url)
        if _on_host(parts.hostname, spec):
            ports[parts.port or 6379] = f"redis {name}"
    for name, ep in inventory.endpoints(*INTERNAL_HTTP_KINDS).items():
        parts = urlsplit(ep.url)
        if _on_host(parts.hostname, spec):
            ports[parts.port or (443 if parts.scheme == "https" else 80)] = f"{ep.kind} {name}"
    return ports


def _sockets(host, name: str) -> str:
    ss = host.run("ss -ltnpH")
    if ss.rc != 0:  # -p is refused by some hardened kernels; the addresses are what matter
        ss = host.run("ss -ltnH")
    assert ss.rc == 0, f"{name}: cannot list listening sockets: {ss.stderr.strip()}"
    return str(ss.stdout)


@check("ACCESS-003", Severity.CRITICAL)
def test_data_services_are_not_published(host, request, inventory, finding) -> None:
    """PostgreSQL, Redis, the backend, Prometheus and Grafana are not bound to all interfaces.

    Risk: anyone who can reach the host can try the database's and the queue's passwords, read
    every metric, and reach Prometheus, which has no authentication of its own.
    """
    name = request.node.callspec.params["host"]
    spec = inventory.hosts[name].spec
    stack = _stack_ports(inventory, spec)
    if not stack:
        pytest.skip(f"{name}: no PostgreSQL, Redis or internal HTTP target of the inventory on it")
    mine = [s for s in listeners(_sockets(host, name)) if s.port in stack]
    exposed = [s for s in mine if s.all_interfaces]
    finding.observe(
        sorted(f"{stack[s.port]} on {s.address}:{s.port}" for s in exposed), expected=[]
    )
    finding.attach("sockets of the stack", "\n".join(s.line for s in mine) or "(none listening)")
    assert not exposed, (
        f"{name}: bound to all interfaces: "
        + ", ".join(f"{stack[s.port]} ({s.address}:{s.port})" for s in exposed)
        + " (expected a specific address, e.g. 127.0.0.1)"
    )


@check("ACCESS-004", Severity.MEDIUM)
def test_only_public_ports_listen_on_all_interfaces(host, request, inventory, finding) -> None:
    """Nothing but the public ports listens on all interfaces.

    Risk: a debug server, an admin console or a forgotten service open to the network is an
    unwatched way in. (The stack's own internal services are judged by ACCESS-003.)
    """
    name = request.node.callspec.params["host"]
    public = set(inventory.audit.public_ports)
    stack = _stack_ports(inventory, inventory.hosts[name].spec)
    everything = [s for s in listeners(_sockets(host, name)) if s.all_interfaces]
    unexpected = [s for s in everything if s.port not in public and s.port not in stack]
    finding.observe(
        sorted({s.port for s in unexpected}), expected=f"only {sorted(public) or 'none'}"
    )
    finding.attach("sockets on all interfaces", "\n".join(s.line for s in everything) or "(none)")
    assert not unexpected, (
        f"{name}: listening on all interfaces: "
        + ", ".join(sorted({f"{s.address}:{s.port}" for s in unexpected}))
        + f" (allowed: {', '.join(map(str, sorted(public))) or 'none'})"
    )
