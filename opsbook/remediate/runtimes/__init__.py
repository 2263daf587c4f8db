"""Runtimes that drive a service with commands on its host: `systemd` and `command`.

The host is the service's `host:` entry of the inventory (default: this machine), reached
through testinfra like every host target (opsbook.targets.HostTarget: over ssh, one connection
per host and run, a connect timeout, TargetUnreachable naming the host when it cannot be
reached). With `sudo: true`, commands run through `sudo -n` (never a password prompt: a sudo
that wants one fails with its own line). Every command runs under coreutils' `timeout`, so a
stop that hangs costs COMMAND_TIMEOUT_S, never the run.
"""

from __future__ import annotations

from typing import Any

from opsbook.inventory import Host, Inventory, Service
from opsbook.remediate.runtime import VERBS, RuntimeCommandFailed, Unsupported
from opsbook.targets import HostTarget

# How long one command of a runtime may take on the host. A stop waits for the service to end
# (systemd's default stop timeout is 90 s); past this, the command is reported as hung.
COMMAND_TIMEOUT_S = 120
# What coreutils' `timeout` exits with when it had to stop the command.
TIMED_OUT = 124
LOCAL = "local"


class HostRuntime:
    """What the systemd and command runtimes share: the service's declaration, its host, sudo,
    and running one command there with a clear line when it fails."""

    name = ""

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self._hosts: dict[str, HostTarget] = {}

    # -- the inventory ---------------------------------------------------------------------------

    def services(self) -> list[str]:
        """The inventory's services that run under this runtime."""
        return [name for name in self.inventory.services if self._mine(name)]

    def _mine(self, service: str) -> bool:
        return service in self.inventory.services and (
            self.inventory.runtime_of(service) == self.name
        )

    def declared(self, service: str) -> Service:
        if not self._mine(service):
            raise Unsupported(self.name, "drive", service, self._not_mine(service))
        return self.inventory.services[service]

    def _not_mine(self, service: str) -> str:
        return f"the inventory declares no {self.name} service {service!r}"

    def _basic_refusal(self, verb: str, service: str) -> str | None:
        if verb not in VERBS:
            return f"no such verb (one of {', '.join(VERBS)})"
        if not self._mine(service):
            return self._not_mine(service)
        return None

    def host(self, service: str) -> HostTarget:
        """The service's host target (one per host, so one connection)."""
        name = self.declared(service).host or LOCAL
        if name not in self._hosts:
            spec = self.inventory.hosts[name] if name != LOCAL else Host(spec="local://")
            self._hosts[name] = HostTarget(name, spec, self.inventory.thresholds.timeout_s)
        return self._hosts[name]

    def sudo(self, service: str) -> str:
        """`sudo -n ` when the inventory says the service is driven through sudo."""
        return "sudo -n " if self.declared(service).sudo else ""

    def shown(self, service: str, command: str) -> str:
        """The command as a plan shows it: where it runs, then what runs there."""
        host = self.host(service)
        if host.spec.spec.startswith("local://"):
            return command
        return f"on {host.name} ({host.where}): {command}"

    # -- running -----------------------------------------------------------------------------------

    def run(self, verb: str, service: str, command: str, *, ok: tuple[int, ...] = (0,)) -> Any:
        """Run `command` (a shell command line) on the service's host; testinfra's result,
        whose exit status must be one of `ok`, else RuntimeCommandFailed naming the runtime,
        the command and where."""
        host = self.host(service)
        host.reachable()
        done = host.testinfra.run(f"timeout {COMMAND_TIMEOUT_S} sh -c %s", command)
        if done.rc in ok:
            return done
        raise self.failure(verb, service, command, done)

    def failure(self, verb: str, service: str, command: str, done: Any) -> RuntimeCommandFailed:
        """The one line for a command that failed: runtime, verb, service, host, the command
        and its own last words (or `timeout`'s)."""
        if done.rc == TIMED_OUT:
            why = f"no answer within {COMMAND_TIMEOUT_S} s"
        else:
            last = [line.strip() for line in done.stderr.splitlines() if line.strip()][-1:]
            why = f"exit status {done.rc}" + (f": {last[0]}" if last else "")
        return RuntimeCommandFailed(
            f"{self.name} runtime: {verb} {service} on host {self.host(service).name}: "
            f"`{command}` failed ({why})"
        )

    def maintenance_flag(self) -> None:
        return None  # a switch, if any, is on the service's host: maintenance() throws it
