"""Where the services run, and how to restart, recreate or scale them there.

The inventory says which runtime: `sandbox` (the native processes of `opsbook sandbox`) or
`compose` (a compose project on a container engine: `docker compose restart`, `up
--force-recreate`, `up --scale`, `kill --signal HUP`). Every action also has the exact command
a person would type, for the plan.

The sandbox's runtime lives in opsbook.remediate.sandbox_runtime, loaded by name from
RUNTIME_MODULES: production code never imports opsbook.sandbox, and that module is the one
place that does.
"""

from __future__ import annotations

import importlib
import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

from opsbook.compose import COMPOSE_FILE, ENV_COMPOSE_DIR, ComposeDriver
from opsbook.inventory import Compose, Inventory

# Runtimes whose modules nothing may import (the sandbox's), by inventory section: each module
# has `runtime(inventory) -> Runtime`.
RUNTIME_MODULES = {"sandbox": "opsbook.remediate.sandbox_runtime"}


class Runtime(Protocol):
    name: str

    def command(self, verb: str, service: str, *args: str) -> str: ...
    def is_running(self, service: str) -> bool: ...
    def restart(self, service: str) -> None: ...
    def recreate(self, service: str) -> None: ...

    def reload(self, service: str) -> None:
        """Send the service SIGHUP: it reads its configuration again without a restart
        (Prometheus its rules, nginx its configuration)."""
        ...

    def replicas(self, service: str) -> int: ...
    def scale(self, service: str, count: int) -> None: ...

    def status_lines(self) -> list[str]:
        """One line per service: running or not, and where (for evidence and people)."""
        ...

    def maintenance_flag(self) -> Path | None:
        """The file whose existence puts the frontend into maintenance mode, on this machine;
        None when this runtime has no such switch."""
        ...


class ComposeRuntime:
    """A compose project on a container engine: `docker compose` for what changes it (the
    commands in the plan are the ones run), the Docker Engine API for what it looks at.

    `up` commands need the variables compose.yaml reads: OPSBOOK_COMPOSE_DIR (where the secret
    files are: the inventory's `compose.dir` when it has one, else $OPSBOOK_COMPOSE_DIR, else
    compose's own default `.opsbook/compose` beside the compose file) and the published port of
    the service, OPSBOOK_PORT_<SERVICE>, taken from the inventory so that a recreated container
    answers where the inventory says (an engine-chosen port would change on every recreate).
    """

    name = "compose"

    def __init__(self, compose: Compose, ports: dict[str, int] | None = None) -> None:
        compose_file = compose.file or COMPOSE_FILE
        given = compose.dir or os.environ.get(ENV_COMPOSE_DIR)
        directory = Path(given) if given else compose_file.parent / ".opsbook" / "compose"
        self.stack = ComposeDriver(
            directory,
            project=compose.project,
            compose_file=compose_file,
            docker_host=compose.docker_host,
        )
        self.ports = dict(ports or {})
        self._client: Any = None

    @classmethod
    def from_inventory(cls, inventory: Inventory) -> ComposeRuntime:
        assert inventory.compose is not None
        return cls(inventory.compose, published_ports(inventory))

    # -- the exact commands --------------------------------------------------------------------

    def _arguments(self, verb: str, service: str, *args: str) -> tuple[list[str], dict[str, str]]:
        """(arguments after `docker compose -p P -f F`, extra environment) for a verb."""
        if verb == "restart":
            return ["restart", service], {}
        if verb == "recreate":
            return ["up", "--detach", "--force-recreate", "--no-deps", service], self._port(service)
        if verb == "reload":
            return ["kill", "--signal", "HUP", service], {}
        if verb == "scale":
            (count,) = args
            # --no-recreate: the running container keeps its port; extra replicas take free ones
            # (the service's port variable is left unset for them, or they would all want it).
            return [
                "up", "--detach", "--no-deps", "--no-recreate",
                "--scale", f"{service}={int(count)}", service,
            ], {}  # fmt: skip
        raise ValueError(f"compose runtime: no such action {verb!r}")

    def _port(self, service: str) -> dict[str, str]:
        port = self.ports.get(service)
        return {port_variable(service): str(port)} if port else {}

    def command(self, verb: str, service: str, *args: str) -> str:
        arguments, extra = self._arguments(verb, service, *args)
        env = {}
        if self.stack.docker_host:
            env["DOCKER_HOST"] = self.stack.docker_host
        if arguments[0] == "up":
            env[ENV_COMPOSE_DIR] = str(self.stack.dir)
        env.update(extra)
        argv = [
            "docker", "compose", "-p", self.stack.project, "-f", str(self.stack.compose_file),
            *arguments,
        ]  # fmt: skip
        return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()), shlex.join(argv)])

    def _run(self, verb: str, service: str, *args: str) -> None:
        arguments, extra = self._arguments(verb, service, *args)
        self.stack.compose(*arguments, env=extra)

    # -- the engine --------------------------------------------------------------------------------

    def _states(self, service: str) -> list[Any]:
        from opsbook.probes.containers import ComposeProject, connect

        if self._client is None:
            self._client = connect(self.stack.docker_host)
        return ComposeProject(self._client, self.stack.project).states(service)

    def is_running(self, service: str) -> bool:
        return self.replicas(service) > 0

    def replicas(self, service: str) -> int:
        """How many containers of the service run (0 when none does)."""
        return sum(1 for state in self._states(service) if state.running)

    def restart(self, service: str) -> None:
        self._run("restart", service)

    def recreate(self, service: str) -> None:
        self._run("recreate", service)

    def reload(self, service: str) -> None:
        self._run("reload", service)

    def scale(self, service: str, count: int) -> None:
        self._run("scale", service, str(count))

    def status_lines(self) -> list[str]:
        """`docker compose ps --all`: one line per container of the project."""
        return self.stack.compose("ps", "--all").strip().splitlines()

    def maintenance_flag(self) -> Path | None:
        return None  # nginx in a container: its maintenance page is switched by hand


def port_variable(service: str) -> str:
    """The variable compose.yaml publishes the service's port on: OPSBOOK_PORT_BACKEND."""
    return "OPSBOOK_PORT_" + "".join(c if c.isalnum() else "_" for c in service.upper())


def published_ports(inventory: Inventory) -> dict[str, int]:
    """The host port the inventory reaches each compose service on."""
    ports: dict[str, int] = {}
    for endpoint in inventory.http.values():
        port = urlsplit(endpoint.url).port
        if endpoint.service and port:
            ports[endpoint.service] = port
    for postgres in inventory.postgres.values():
        if postgres.service:
            ports[postgres.service] = postgres.port
    for redis in inventory.redis.values():
        port = urlsplit(redis.url).port
        if redis.service and port:
            ports[redis.service] = port
    return ports


def runtime_for(inventory: Inventory) -> Runtime | None:
    """The inventory's runtime, or None when it names none."""
    if inventory.sandbox is not None:
        module = importlib.import_module(RUNTIME_MODULES["sandbox"])
        factory = cast(Callable[[Inventory], Runtime], module.runtime)
        return factory(inventory)
    if inventory.compose is not None:
        return ComposeRuntime.from_inventory(inventory)
    return None
