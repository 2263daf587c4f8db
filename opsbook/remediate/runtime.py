"""Where the services run, and how to restart, recreate or scale them there.

The inventory says which runtime: `sandbox` (the native processes of `opsbook sandbox`) or
`compose` (a compose project on a container engine). Every action also has the exact command a
person would type, for the plan.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from opsbook.inventory import Inventory


class Runtime(Protocol):
    name: str

    def command(self, verb: str, service: str, *args: str) -> str: ...
    def is_running(self, service: str) -> bool: ...
    def restart(self, service: str) -> None: ...
    def recreate(self, service: str) -> None: ...
    def replicas(self, service: str) -> int: ...
    def scale(self, service: str, count: int) -> None: ...


class SandboxRuntime:
    """The sandbox's own process control (`python -m opsbook sandbox restart NAME`)."""

    name = "sandbox"

    def __init__(self, directory: Path) -> None:
        from opsbook.sandbox.stack import Stack

        self.stack = Stack(directory)

    def command(self, verb: str, service: str, *args: str) -> str:
        words = " ".join((verb, service, *args))
        return f"python -m opsbook sandbox {words} --dir {self.stack.dir}"

    def is_running(self, service: str) -> bool:
        return self.stack.component(service).is_running()

    def restart(self, service: str) -> None:
        self.stack.restart(service)

    def recreate(self, service: str) -> None:
        self.stack.recreate(service)

    def replicas(self, service: str) -> int:
        """How many processes of the service run (0 when it is stopped)."""
        return self.stack.replicas(service)

    def scale(self, service: str, count: int) -> None:
        self.stack.scale(service, count)


def runtime_for(inventory: Inventory) -> Runtime | None:
    if inventory.sandbox is not None:
        return SandboxRuntime(inventory.sandbox.dir)
    return None
