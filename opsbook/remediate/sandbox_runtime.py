"""The sandbox as a runtime: its native processes driven through the same Runtime seam as any
deployment (`python -m opsbook sandbox restart NAME` is the command a person would type).

The one exception to "production code never imports opsbook.sandbox": this module drives the
sandbox, so it imports it. Nothing imports this module either: opsbook.remediate.runtime loads
it by name (RUNTIME_MODULES) when an inventory has a `sandbox:` section, so that the sandbox
stays out of every other module's imports (tests/test_imports.py holds both rules).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from opsbook.inventory import Inventory
from opsbook.remediate.runtime import RELOADS_ON_SIGHUP, VERBS, Runtime, refuse
from opsbook.sandbox.nginx import Nginx
from opsbook.sandbox.stack import SCALABLE, Stack


class SandboxRuntime:
    """The sandbox's own process control."""

    name = "sandbox"

    def __init__(self, directory: Path) -> None:
        self.stack = Stack(directory)

    def refusal(self, verb: str, service: str) -> str | None:
        if verb not in VERBS:
            return f"no such verb (one of {', '.join(VERBS)})"
        if verb == "reload" and service not in RELOADS_ON_SIGHUP:
            return "its process does not reload its configuration on SIGHUP; restart it"
        if verb == "scale" and service not in SCALABLE:
            return f"it runs as one process (only {', '.join(SCALABLE)} can be scaled)"
        if verb == "maintenance":
            if service != "nginx":
                return "the maintenance page is the frontend's (nginx)"
            if self.maintenance_flag() is None:
                return f"no sandbox nginx in {self.stack.dir} (is the sandbox up?)"
        return None

    def command(self, verb: str, service: str, *args: str) -> str:
        refuse(self, verb, service)
        if verb == "reload":
            return f"kill -HUP {self._pid(service)}"
        if verb == "status":
            return f"python -m opsbook sandbox status --dir {self.stack.dir}"
        if verb == "maintenance":
            flag = self.maintenance_flag()
            return f"touch {flag}" if args == ("on",) else f"rm -f {flag}"
        words = " ".join((verb, service, *args))
        return f"python -m opsbook sandbox {words} --dir {self.stack.dir}"

    def is_running(self, service: str) -> bool:
        return self.stack.component(service).is_running()

    def start(self, service: str) -> None:
        self.stack.start(service)

    def stop(self, service: str) -> None:
        self.stack.stop(service)

    def restart(self, service: str) -> None:
        self.stack.restart(service)

    def recreate(self, service: str) -> None:
        self.stack.recreate(service)

    def _pid(self, service: str) -> int:
        pid = self.stack.component(service).pid()
        if pid is None:
            raise ProcessLookupError(f"{service} does not run: nothing to reload")
        return pid

    def reload(self, service: str) -> None:
        refuse(self, "reload", service)
        os.kill(self._pid(service), signal.SIGHUP)

    def replicas(self, service: str) -> int:
        """How many processes of the service run (0 when it is stopped)."""
        return self.stack.replicas(service)

    def scale(self, service: str, count: int) -> None:
        refuse(self, "scale", service)
        self.stack.scale(service, count)

    def status_lines(self) -> list[str]:
        """One line per component (and per extra replica): running or not, pid, port."""
        return [status.line() for status in self.stack.status()]

    def maintenance_command(self, on: bool, service: str) -> str:
        return self.command("maintenance", service, "on" if on else "off")

    def maintenance(self, on: bool, service: str) -> None:
        """The flag file, which nginx tests on every request (no reload needed)."""
        _maintenance(self, on, service)

    def maintenance_flag(self) -> Path | None:
        """DIR/nginx/maintenance.on, which the sandbox's nginx tests on every request; None
        when no sandbox nginx has been set up in DIR (is the sandbox up?)."""
        # Only the flag's path is wanted: no port, and nothing is started or written.
        flag = Nginx(self.stack.layout, None, backend_port=0).maintenance_flag
        return flag if flag.parent.is_dir() else None


def runtime(inventory: Inventory) -> Runtime:
    """The runtime of an inventory with a `sandbox:` section (runtime_for's entry point; typed
    as a Runtime so that mypy holds SandboxRuntime to the protocol)."""
    assert inventory.sandbox is not None
    return SandboxRuntime(inventory.sandbox.dir)


def _maintenance(runtime: SandboxRuntime, on: bool, service: str) -> None:
    refuse(runtime, "maintenance", service)
    flag = runtime.maintenance_flag()
    assert flag is not None  # refusal() covers a sandbox without nginx
    if on:
        flag.touch()
        flag.chmod(0o644)  # nginx's workers (nobody as root) must see it
    else:
        flag.unlink(missing_ok=True)
