"""The `command` runtime: the inventory's own commands for a service nothing else drives.

`commands: {start, stop, status, restart, reload}` (opsbook.inventory.ServiceCommands) run as
`sh -c` on the service's host (sudo -n if asked). `status` exits 0 when the service runs.
Without `restart`, a restart is the stop command, then the start command (a stop that fails
while the service does not run is no obstacle to the start). Without `reload`, reload is
refused; so are recreate and scale, for which the inventory gives no commands. Maintenance
mode is the inventory's `maintenance_on` and `maintenance_off` commands (the frontend's page
switched on and off, e.g. a flag file its nginx tests and a reload); refused without them.

A start command that leaves a process running must detach it from its output (`setsid
daemon >log 2>&1 &`), as with any command over ssh: the command is over when its output is.
"""

from __future__ import annotations

import shlex

from opsbook.inventory import Inventory, ServiceCommands
from opsbook.remediate.runtime import Runtime, refuse
from opsbook.remediate.runtimes import HostRuntime


class CommandRuntime(HostRuntime):
    """Services driven by the commands the inventory gives for them."""

    name = "command"

    def commands(self, service: str) -> ServiceCommands:
        declared = self.declared(service).commands
        assert declared is not None, "the inventory requires commands with runtime: command"
        return declared

    def refusal(self, verb: str, service: str) -> str | None:
        basic = self._basic_refusal(verb, service)
        if basic is not None:
            return basic
        if verb == "recreate":
            return "the inventory gives no command to recreate it; restart it"
        if verb == "scale":
            return "the inventory gives commands for one instance, none to scale it"
        if verb == "reload" and self.commands(service).reload is None:
            return "the inventory gives no reload command"
        if verb == "maintenance" and self.commands(service).maintenance_on is None:
            return "the inventory gives no maintenance_on and maintenance_off commands"
        return None

    def _given(self, verb: str, service: str) -> str | None:
        commands = self.commands(service)
        given: str | None = getattr(commands, verb, None)
        return given

    def _sudo(self, service: str, command: str) -> str:
        """The command line that runs on the host (through sudo -n if asked)."""
        prefix = self.sudo(service)
        return f"{prefix}sh -c {shlex.quote(command)}" if prefix else command

    def command(self, verb: str, service: str, *args: str) -> str:
        refuse(self, verb, service)
        commands = self.commands(service)
        if verb == "maintenance":
            (switch,) = args
            return self.maintenance_command(switch == "on", service)
        if verb == "restart" and commands.restart is None:
            line = f"{self._sudo(service, commands.stop)}; {self._sudo(service, commands.start)}"
        else:
            given = self._given(verb, service)
            assert given is not None  # refusal() covers the optional ones
            line = self._sudo(service, given)
        return self.shown(service, line)

    def _act(self, verb: str, service: str) -> None:
        refuse(self, verb, service)
        given = self._given(verb, service)
        assert given is not None
        self.run(verb, service, self._sudo(service, given))

    def is_running(self, service: str) -> bool:
        refuse(self, "status", service)
        # Any exit status is an answer (0: runs), but for `timeout`'s 124 (no answer), the
        # shell's 126 and 127 (the command cannot run) and a sudo that refused: "not running"
        # would be a guess, and a fix would act on it.
        answers = tuple(rc for rc in range(256) if rc not in (124, 126, 127))
        status = self._sudo(service, self.commands(service).status)
        done = self.run("status", service, status, ok=answers)
        if done.rc != 0 and self.sudo(service) and done.stderr.lstrip().startswith("sudo:"):
            raise self.failure("status", service, status, done)
        return bool(done.rc == 0)

    def replicas(self, service: str) -> int:
        return 1 if self.is_running(service) else 0

    def start(self, service: str) -> None:
        self._act("start", service)

    def stop(self, service: str) -> None:
        self._act("stop", service)

    def restart(self, service: str) -> None:
        if self.commands(service).restart is not None:
            self._act("restart", service)
            return
        try:
            self._act("stop", service)
        except Exception:
            if self.is_running(service):
                raise
        self._act("start", service)

    def reload(self, service: str) -> None:
        self._act("reload", service)

    def recreate(self, service: str) -> None:
        self._act("recreate", service)

    def scale(self, service: str, count: int) -> None:
        refuse(self, "scale", service)

    def _maintenance_line(self, on: bool, service: str) -> str:
        refuse(self, "maintenance", service)
        commands = self.commands(service)
        given = commands.maintenance_on if on else commands.maintenance_off
        assert given is not None  # refusal() covers them, and the inventory gives both or none
        return self._sudo(service, given)

    def maintenance_command(self, on: bool, service: str) -> str:
        return self.shown(service, self._maintenance_line(on, service))

    def maintenance(self, on: bool, service: str) -> None:
        self.run("maintenance", service, self._maintenance_line(on, service))

    def status_lines(self) -> list[str]:
        """One line per command service: its host and whether its status command says it runs."""
        lines = []
        for service in self.services():
            try:
                state = "running" if self.is_running(service) else "not running"
            except Exception as exc:  # an unreachable host is a line of the status, not a crash
                state = f"unknown: {exc}"
            lines.append(f"{service}: on {self.host(service).name}: {state}")
        return lines


def runtime(inventory: Inventory) -> Runtime:
    """runtime_named's entry point (typed as a Runtime, so that mypy holds it to the protocol)."""
    return CommandRuntime(inventory)
