"""The `systemd` runtime: systemctl on the service's host, local or over ssh, sudo if asked.

The unit is the inventory's `unit:` (default `<service>.service`). A templated unit
(`worker@.service`) is the service's instances: start runs `worker@1.service`, stop, restart and
reload act on every running instance, and scale N runs exactly `worker@1` .. `worker@N`. A unit
is never recreated (there is no image to recreate it from): refused, restart it instead.

Maintenance mode is for a unit whose nginx tests a flag file, as opsbook's own nginx does (the
snippet is in docs/inventory.md): `maintenance_flag:` in the inventory names that file on the
host; on creates it, off removes it, each followed by `systemctl reload` of the unit, all
through `sudo -n` with `sudo: true`. A service without the setting is refused in one line.
"""

from __future__ import annotations

import shlex

from opsbook.inventory import Inventory
from opsbook.remediate.runtime import Runtime, refuse
from opsbook.remediate.runtimes import HostRuntime


class SystemdRuntime(HostRuntime):
    """Services that are systemd units on a host of the inventory."""

    name = "systemd"

    def unit(self, service: str) -> str:
        return self.declared(service).unit or f"{service}.service"

    def templated(self, service: str) -> bool:
        """Whether the unit is a template (`worker@.service`): the service's instances."""
        return self.unit(service).endswith("@.service")

    def _instance(self, service: str, number: int) -> str:
        return self.unit(service).replace("@.service", f"@{number}.service")

    def _pattern(self, service: str) -> str:
        return self.unit(service).replace("@.service", "@*.service")

    def refusal(self, verb: str, service: str) -> str | None:
        basic = self._basic_refusal(verb, service)
        if basic is not None:
            return basic
        if verb == "recreate":
            return "a unit has no image to recreate it from; restart it"
        if verb == "maintenance" and self.declared(service).maintenance_flag is None:
            return (
                f"the inventory names no services.{service}.maintenance_flag (the file its "
                "nginx configuration tests; see docs/inventory.md)"
            )
        if verb == "scale" and not self.templated(service):
            return (
                f"scale needs a templated unit (NAME@.service) in the inventory, "
                f"not {self.unit(service)}"
            )
        return None

    def _systemctl(self, service: str, *words: str) -> str:
        return f"{self.sudo(service)}systemctl {shlex.join(words)}"

    def _line(self, verb: str, service: str, *args: str) -> str:
        """The systemctl command line of a verb (on the host)."""
        if verb == "status":
            target = self._pattern(service) if self.templated(service) else self.unit(service)
            return f"systemctl is-active {shlex.quote(target)}"
        if not self.templated(service):
            return self._systemctl(service, verb, self.unit(service))
        if verb == "start":
            return self._systemctl(service, "start", self._instance(service, 1))
        if verb == "scale":
            (count,) = args
            wanted = [self._instance(service, n) for n in range(1, int(count) + 1)]
            return (
                self._systemctl(service, "start", *wanted)
                + f", then stop the other running instances of {self._pattern(service)}"
            )
        return self._systemctl(service, verb, self._pattern(service))

    def command(self, verb: str, service: str, *args: str) -> str:
        refuse(self, verb, service)
        if verb == "maintenance":
            (switch,) = args
            return self.maintenance_command(switch == "on", service)
        return self.shown(service, self._line(verb, service, *args))

    def _maintenance_line(self, on: bool, service: str) -> str:
        """The flag file created (on) or removed (off), then the unit reloaded, so that nginx
        serves through whatever its configuration says now."""
        refuse(self, "maintenance", service)
        flag = shlex.quote(self.declared(service).maintenance_flag or "")
        change = f"touch {flag}" if on else f"rm -f {flag}"
        return f"{self.sudo(service)}{change} && {self._line('reload', service)}"

    # -- what it looks at --------------------------------------------------------------------------

    def instances(self, service: str) -> list[str]:
        """The running instances of a templated unit, by unit name."""
        listing = (
            "systemctl list-units --type=service --state=active --plain --no-legend "
            + shlex.quote(self._pattern(service))
        )
        done = self.run("status", service, listing)
        return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]

    def is_running(self, service: str) -> bool:
        if self.templated(service):
            return bool(self.instances(service))
        refuse(self, "status", service)
        # is-active exits 0 when active, 3 (or another status) when not: both are answers.
        done = self.run("status", service, self._line("status", service), ok=(0, 1, 2, 3, 4))
        return bool(done.rc == 0)

    def replicas(self, service: str) -> int:
        if self.templated(service):
            return len(self.instances(service))
        return 1 if self.is_running(service) else 0

    # -- what it changes ---------------------------------------------------------------------------

    def _act(self, verb: str, service: str, *args: str) -> None:
        refuse(self, verb, service)
        self.run(verb, service, self._line(verb, service, *args))

    def start(self, service: str) -> None:
        self._act("start", service)

    def stop(self, service: str) -> None:
        self._act("stop", service)

    def restart(self, service: str) -> None:
        if self.templated(service) and not self.instances(service):
            self._act("start", service)  # no instance runs: a pattern would match none
            return
        self._act("restart", service)

    def reload(self, service: str) -> None:
        self._act("reload", service)

    def recreate(self, service: str) -> None:
        self._act("recreate", service)

    def maintenance_command(self, on: bool, service: str) -> str:
        return self.shown(service, self._maintenance_line(on, service))

    def maintenance(self, on: bool, service: str) -> None:
        self.run("maintenance", service, self._maintenance_line(on, service))

    def scale(self, service: str, count: int) -> None:
        refuse(self, "scale", service)
        wanted = [self._instance(service, n) for n in range(1, count + 1)]
        if wanted:
            self.run("scale", service, self._systemctl(service, "start", *wanted))
        extra = [unit for unit in self.instances(service) if unit not in wanted]
        if extra:
            self.run("scale", service, self._systemctl(service, "stop", *extra))

    def status_lines(self) -> list[str]:
        """One line per systemd service: its unit, host and state (`systemctl is-active`)."""
        lines = []
        for service in self.services():
            host = self.host(service).name
            try:
                state = (
                    f"{self.replicas(service)} running"
                    if self.templated(service)
                    else ("active" if self.is_running(service) else "not active")
                )
            except Exception as exc:  # an unreachable host is a line of the status, not a crash
                state = f"unknown: {exc}"
            lines.append(f"{service}: {self.unit(service)} on {host}: {state}")
        return lines


def runtime(inventory: Inventory) -> Runtime:
    """runtime_named's entry point (typed as a Runtime, so that mypy holds it to the protocol)."""
    return SystemdRuntime(inventory)
