"""The TCP sockets listening on a host, and which of the inventory's services own them.

testinfra's `socket.get_listening_sockets()` gives addresses and ports but drops the process
that listens, and the process (`redis-server`) is what tells an operator what to rebind. So the
probe reads `ss -ltnpH` through testinfra, under `timeout` (opsbook.probes.host.run).
"""

from __future__ import annotations

import re
import socket
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from msgspec import Struct

from opsbook.probes.host import NotObserved, run

if TYPE_CHECKING:
    from opsbook.inventory import Inventory
    from opsbook.targets import HostTarget

WILDCARDS = frozenset({"0.0.0.0", "::", "*"})  # noqa: S104 - recognised, never bound


class Listener(Struct, frozen=True):
    """A listening TCP socket: the address it is bound to, its port and the ss line."""

    address: str
    port: int
    line: str

    @property
    def all_interfaces(self) -> bool:
        return self.address in WILDCARDS


# Compiled when first used (re caches it), not on import: every run imports the probes its
# checks name, and most runs never audit access.
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


def listening_sockets(host: HostTarget, *, timeout_s: float) -> list[Listener]:
    """Every listening TCP socket of the host, with its process where the kernel tells it."""
    ss = run(host, "listening sockets", "ss -ltnpH", timeout_s=timeout_s)
    if ss.rc != 0:  # -p is refused by some hardened kernels; the addresses are what matter
        ss = run(host, "listening sockets", "ss -ltnH", timeout_s=timeout_s)
    if ss.rc != 0:
        raise NotObserved(host, "listening sockets", f"ss failed: {ss.why()}")
    return listeners(str(ss.stdout))


# Kinds of HTTP endpoint that sit behind nginx and must never be published themselves.
INTERNAL_HTTP_KINDS = ("backend", "prometheus", "grafana")
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


def _on_host(address: str | None, spec: str) -> bool:
    """Whether a service at `address` listens on the host of testinfra spec `spec`."""
    if not address:
        return False
    if spec.startswith("local://"):
        return address in {*LOOPBACK_NAMES, socket.gethostname(), socket.getfqdn()}
    return address == urlsplit(spec).hostname


def internal_ports(inventory: Inventory, host: HostTarget) -> dict[int, str]:
    """The ports on this host of the inventory's services that must not be published
    (PostgreSQL, Redis, the backend, Prometheus, Grafana), each with its service's label."""
    spec = host.spec.spec
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
