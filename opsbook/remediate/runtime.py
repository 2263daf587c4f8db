"""Where the services run, and how to start, stop, restart, reload, recreate or scale them there.

Each service of the inventory names its runtime (`Inventory.runtime_of`):

- `sandbox`: the native processes of `opsbook sandbox`;
- `compose`: a compose project on a container engine (`docker compose restart`, `up
  --force-recreate`, `up --scale`);
- `systemd`: systemctl on the service's host (local, or over ssh through testinfra), through
  sudo where the inventory says (opsbook.remediate.runtimes.systemd);
- `command`: the inventory's own start/stop/restart/status/reload commands, run on the
  service's host (opsbook.remediate.runtimes.command).

Every action also has the exact command a person would type, for the plan. A verb a runtime
cannot do (for a service) is refused with one line naming the runtime (`Unsupported`, a
`Refused`); `refusal(verb, service)` says so beforehand, so that a fix can plan around it. The
matrix is in docs/remediation.md#runtimes.

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
from opsbook.remediate.plan import Refused
from opsbook.targets import HttpTarget

# Runtimes loaded by name, each module with `runtime(inventory) -> Runtime`: the sandbox's, which
# nothing else may import, and the host runtimes, which import this module.
RUNTIME_MODULES = {
    "sandbox": "opsbook.remediate.sandbox_runtime",
    "systemd": "opsbook.remediate.runtimes.systemd",
    "command": "opsbook.remediate.runtimes.command",
}


# What a runtime may be asked to do to a service. `status` is `is_running`; `maintenance` is
# the frontend's maintenance page, on or off.
VERBS = ("start", "stop", "restart", "status", "reload", "recreate", "scale", "maintenance")


class Unsupported(Refused):
    """A runtime cannot do this verb (for this service): refused, nothing was attempted."""

    def __init__(self, runtime: str, verb: str, service: str, why: str) -> None:
        self.runtime, self.verb, self.service, self.why = runtime, verb, service, why
        super().__init__(f"{runtime} runtime: cannot {verb} {service}: {why}")


class RuntimeCommandFailed(Exception):
    """A runtime's command ran and failed: the message names the runtime, the command, where
    it ran, and the command's own last words."""


class Runtime(Protocol):
    name: str

    def refusal(self, verb: str, service: str) -> str | None:
        """Why this runtime cannot do `verb` to `service` (one line naming the runtime); None
        when it can."""
        ...

    def command(self, verb: str, service: str, *args: str) -> str:
        """The exact command of a verb, for the plan; raises Unsupported when refused."""
        ...

    def is_running(self, service: str) -> bool: ...
    def start(self, service: str) -> None: ...
    def stop(self, service: str) -> None: ...
    def restart(self, service: str) -> None: ...

    def reload(self, service: str) -> None:
        """The service reads its configuration again without a restart (Prometheus its rules,
        nginx its configuration): SIGHUP, `systemctl reload`, or the inventory's command."""
        ...

    def recreate(self, service: str) -> None: ...
    def replicas(self, service: str) -> int: ...
    def scale(self, service: str, count: int) -> None: ...

    def status_lines(self) -> list[str]:
        """One line per service: running or not, and where (for evidence and people)."""
        ...

    def maintenance_flag(self) -> Path | None:
        """The file whose existence puts the frontend into maintenance mode, on this machine;
        None when this runtime has no such switch."""
        ...

    def maintenance_command(self, on: bool, service: str) -> str:
        """The exact command that switches `service`'s maintenance page on or off; raises
        Unsupported when this runtime has no switch for it."""
        ...

    def maintenance(self, on: bool, service: str) -> None:
        """Switch `service`'s (the frontend's nginx) maintenance page on or off. Whether it is
        on is read from the entry itself: maintenance_served()."""
        ...


def maintenance_served(frontend: HttpTarget) -> bool:
    """Whether the entry serves the maintenance page now: its answer at / is a 503 carrying
    the page (opsbook's nginx snippet, on every runtime: docs/inventory.md), whoever switched
    it on.
    TargetUnreachable when nothing answers."""
    answer = frontend.get("/")
    return answer.status_code == 503 and MAINTENANCE_TITLE in answer.text


def refuse(runtime: Runtime, verb: str, service: str) -> None:
    """Raise Unsupported when `runtime` cannot do `verb` to `service`."""
    why = runtime.refusal(verb, service)
    if why is not None:
        raise Unsupported(runtime.name, verb, service, why)


# The maintenance page of opsbook's nginx (opsbook/sandbox/nginx.py, containers/nginx), and the
# file inside the compose frontend's container that nginx.conf tests: while it exists, every
# path answers 503 with the page.
MAINTENANCE_TITLE = "<title>Maintenance</title>"
COMPOSE_MAINTENANCE_FLAG = "/var/lib/nginx/maintenance.on"
COMPOSE_FRONTENDS = ("frontend", "nginx")

# Compose services (opsbook's compose.yaml) whose main process reloads its configuration on
# SIGHUP: nginx, PostgreSQL, Prometheus. Others (the Python backend and worker, Redis) would
# die of it.
RELOADS_ON_SIGHUP = ("frontend", "nginx", "postgres", "prometheus")


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
            override_file=compose.override_file,
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
        refuse(self, verb, service)
        if verb in ("start", "stop", "restart"):
            return [verb, service], {}
        if verb == "status":
            return ["ps", "--all", service], {}
        if verb == "maintenance":
            (switch,) = args
            # The flag file is what nginx.conf tests; the reload has nginx read its configuration
            # again, so that the page is served through whatever it says now.
            change = (
                f"touch {COMPOSE_MAINTENANCE_FLAG}"
                if switch == "on"
                else (f"rm -f {COMPOSE_MAINTENANCE_FLAG}")
            )
            return ["exec", "-T", service, "sh", "-c", f"{change} && nginx -s reload"], {}
        if verb == "reload":
            return ["kill", "--signal", "HUP", service], {}
        if verb == "recreate":
            return ["up", "--detach", "--force-recreate", "--no-deps", service], self._port(service)
        if verb == "scale":
            (count,) = args
            # --no-recreate: the running container keeps its port; extra replicas take free ones
            # (the service's port variable is left unset for them, or they would all want it).
            return [
                "up", "--detach", "--no-deps", "--no-recreate",
                "--scale", f"{service}={int(count)}", service,
            ], {}  # fmt: skip
        raise Unsupported(self.name, verb, service, "no such verb")

    def _port(self, service: str) -> dict[str, str]:
        port = self.ports.get(service)
        return {port_variable(service): str(port)} if port else {}

    def command(self, verb: str, service: str, *args: str, with_override: bool = False) -> str:
        """The exact command of a verb; `with_override`: with the override file's -f even
        before it exists (a plan that writes it first)."""
        arguments, extra = self._arguments(verb, service, *args)
        env = {}
        if self.stack.docker_host:
            env["DOCKER_HOST"] = self.stack.docker_host
        if arguments[0] == "up":
            env[ENV_COMPOSE_DIR] = str(self.stack.dir)
        env.update(extra)
        files = self.stack.file_arguments(with_override=with_override)
        argv = ["docker", "compose", "-p", self.stack.project, *files, *arguments]
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

    def refusal(self, verb: str, service: str) -> str | None:
        if verb not in VERBS:
            return f"no such verb (one of {', '.join(VERBS)})"
        if verb == "reload" and service not in RELOADS_ON_SIGHUP:
            return "its process does not reload its configuration on SIGHUP; restart it"
        if verb == "maintenance" and service not in COMPOSE_FRONTENDS:
            return f"the maintenance page is the frontend's (nginx: {', '.join(COMPOSE_FRONTENDS)})"
        return None

    def start(self, service: str) -> None:
        self._run("start", service)

    def stop(self, service: str) -> None:
        self._run("stop", service)

    def restart(self, service: str) -> None:
        self._run("restart", service)

    def reload(self, service: str) -> None:
        self._run("reload", service)

    def recreate(self, service: str) -> None:
        self._run("recreate", service)

    def scale(self, service: str, count: int) -> None:
        self._run("scale", service, str(count))

    def status_lines(self) -> list[str]:
        """`docker compose ps --all`: one line per container of the project."""
        return self.stack.compose("ps", "--all").strip().splitlines()

    def maintenance_flag(self) -> Path | None:
        return None  # the flag is inside the frontend's container: maintenance() switches it

    def maintenance_command(self, on: bool, service: str) -> str:
        return self.command("maintenance", service, "on" if on else "off")

    def maintenance(self, on: bool, service: str) -> None:
        self._run("maintenance", service, "on" if on else "off")


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
    """The deployment's runtime (its sandbox: or compose: section), or None when it names
    none. A service's own runtime is runtime_of's."""
    if inventory.sandbox is not None:
        return runtime_named(inventory, "sandbox")
    if inventory.compose is not None:
        return ComposeRuntime.from_inventory(inventory)
    return None


def runtime_named(inventory: Inventory, name: str) -> Runtime:
    """The inventory's runtime called `name` (sandbox, compose, systemd, command)."""
    if name == "compose":
        if inventory.compose is None:
            raise ValueError("the inventory has no compose: section")
        return ComposeRuntime.from_inventory(inventory)
    module = importlib.import_module(RUNTIME_MODULES[name])
    factory = cast(Callable[[Inventory], Runtime], module.runtime)
    return factory(inventory)


def runtime_of(inventory: Inventory, service: str) -> Runtime | None:
    """The runtime that drives `service`: its own (`services.NAME.runtime`), else the
    deployment's; None when nothing here can."""
    name = inventory.runtime_of(service)
    return runtime_named(inventory, name) if name is not None else None
