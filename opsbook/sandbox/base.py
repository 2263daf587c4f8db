"""What every sandbox component shares: the directory layout, secrets, ports and readiness."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from opsbook.sandbox.process import DEADLINE_S, POLL_S, ComponentError, Process, SandboxError
from opsbook.waiting import until


@dataclass(frozen=True)
class Layout:
    """Where everything of one sandbox lives; nothing is written outside `dir`."""

    dir: Path

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    @property
    def run(self) -> Path:
        return self.dir / "run"

    @property
    def secrets(self) -> Path:
        return self.dir / "secrets"

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @property
    def inventory(self) -> Path:
        return self.dir / "inventory.yaml"

    @property
    def app_config(self) -> Path:
        return self.dir / "app.json"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def pid_file(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    def secret_file(self, name: str) -> Path:
        return self.secrets / f"{name}.password"

    def secret(self, name: str) -> str:
        """The password kept in secrets/NAME.password, created (random, mode 0600) on first use."""
        path = self.secret_file(name)
        if not path.exists():
            self.secrets.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as stream:
                stream.write(secrets.token_hex(24) + "\n")
        return path.read_text(encoding="ascii").strip()


class Component:
    """A component of the stack: one native process with a readiness probe."""

    name: str = ""

    def __init__(self, layout: Layout, port: int | None) -> None:
        self.layout = layout
        self.port = port
        self.process = self._process()

    def _process(self) -> Process:
        raise NotImplementedError

    def prepare(self) -> None:
        """Write configuration (and initialise data) before the process starts."""

    def ready(self) -> bool:
        """One readiness probe (with a timeout)."""
        raise NotImplementedError

    def is_running(self) -> bool:
        return self.process.is_running()

    def pid(self) -> int | None:
        return self.process.pid()

    def start(self) -> None:
        """Start the component unless it runs, and wait until it is ready."""
        if self.is_running():
            return
        self.prepare()
        try:
            self.process.spawn()
        except OSError as exc:
            problem = f"cannot run {self.process.argv[0]}: {exc.strerror}"
            raise ComponentError(self.name, problem, None) from None
        self.wait_ready()

    def wait_ready(self, deadline_s: float = DEADLINE_S) -> None:
        def settled() -> bool:
            return not self.process.is_running() or self.ready()

        until(settled, deadline_s, POLL_S)
        if not self.process.is_running():
            code = self.process.exit_code()
            how = f"exited with code {code}" if code is not None else "exited"
            raise ComponentError(self.name, f"failed to start: {how}", self.process.log)
        if not self.ready():
            raise ComponentError(
                self.name, f"failed to start: not ready after {deadline_s:.0f} s", self.process.log
            )

    def stop(self) -> None:
        self.process.stop()


def require_port(component: Component) -> int:
    if component.port is None:
        raise SandboxError(f"{component.name}: no port assigned")
    return component.port
