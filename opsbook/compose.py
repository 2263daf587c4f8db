"""A compose project on a container engine (Docker, or Podman's Docker API), driven through
`docker compose`: the driver for every compose deployment, production or the sandbox's own
(opsbook/sandbox/compose.py builds the sandbox's compose stack on it).

Every command gets DOCKER_HOST (when one is known), OPSBOOK_COMPOSE_DIR=DIR (the project's
state directory, where a compose file such as the repository's compose.yaml finds its secret
files) and DOCKER_BUILDKIT=0 (BuildKit would pull its own image, and no registry may be
reachable). The environment is read when a command runs, never at import.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

# The repository's compose.yaml (the AI chat system as containers): the compose file of an
# inventory that names none.
# Shipped inside the package (opsbook/compose.yaml is a link to the checkout's compose.yaml).
COMPOSE_FILE = Path(__file__).parent / "compose.yaml"
PODMAN_SOCKET = Path("/run/podman/podman.sock")
ENV_COMPOSE_DIR = "OPSBOOK_COMPOSE_DIR"
COMMAND_TIMEOUT_S = 120.0


class ComposeError(Exception):
    """A `docker compose` command failed, or a service did not become ready."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.log_tail = output.strip().splitlines()[-20:]


def _shipped_build_paths() -> dict[str, str]:
    """Where the shipped compose.yaml finds the reference application's build context and
    Dockerfile, wherever opsbook is installed (found, not imported: production code does not
    import the reference application)."""
    spec = importlib.util.find_spec("chatapp")
    if spec is None or spec.origin is None:
        return {}
    return {
        "OPSBOOK_CHATAPP_DIR": str(Path(spec.origin).parent),
        "OPSBOOK_APP_DOCKERFILE": str(Path(__file__).parent / "containers/app/Dockerfile"),
    }


def default_docker_host() -> str | None:
    """$DOCKER_HOST if set, else Podman's API socket if it is there, else the client default."""
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"]
    if PODMAN_SOCKET.is_socket():
        return f"unix://{PODMAN_SOCKET}"
    return None


def project_name(directory: Path) -> str:
    """A compose project name of its own for each state directory."""
    digest = hashlib.sha256(str(directory).encode()).hexdigest()[:8]
    stem = re.sub(r"[^a-z0-9]+", "-", directory.name.lower()).strip("-")[:20] or "stack"
    return f"opsbook-{stem}-{digest}"


class ComposeDriver:
    """One compose project: its state directory (made absolute), name, file and engine."""

    def __init__(
        self,
        directory: Path,
        *,
        project: str | None = None,
        compose_file: Path = COMPOSE_FILE,
        docker_host: str | None = None,
        override_file: Path | None = None,
    ) -> None:
        self.dir = Path(directory).absolute()
        self.project = project or project_name(self.dir)
        self.compose_file = compose_file
        self.docker_host = docker_host or default_docker_host()
        # Read after the compose file by every command, once it exists (the deployment's limits
        # are written there: opsbook.remediation.limits), as `docker compose` reads
        # compose.override.yaml on its own only when no -f is given.
        self.override_file = override_file

    def file_arguments(self, *, with_override: bool = False) -> list[str]:
        """`-f FILE [-f OVERRIDE]`: the override where it exists, or is about to
        (`with_override`, for a plan that writes it first)."""
        files = ["-f", str(self.compose_file)]
        override = self.override_file
        if override is not None and (with_override or override.exists()):
            files += ["-f", str(override)]
        return files

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["DOCKER_BUILDKIT"] = "0"
        env["COMPOSE_DOCKER_CLI_BUILD"] = "0"
        env[ENV_COMPOSE_DIR] = str(self.dir)
        env.update(_shipped_build_paths())
        if self.docker_host:
            env["DOCKER_HOST"] = self.docker_host
        return env

    def compose(
        self,
        *args: str,
        timeout: float = COMMAND_TIMEOUT_S,
        env: Mapping[str, str] | None = None,
    ) -> str:
        """Run `docker compose -p PROJECT -f FILE [-f OVERRIDE] ARGS...`; its stdout, or
        ComposeError.

        `env` adds variables for this command only (`OPSBOOK_PORT_BACKEND=...`)."""
        if shutil.which("docker") is None:
            raise ComposeError("compose: the docker CLI is not installed")
        argv = ["docker", "compose", "-p", self.project, *self.file_arguments(), *args]
        try:
            done = subprocess.run(
                argv,
                env={**self._env(), **(env or {})},
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            output = exc.stderr if isinstance(exc.stderr, str) else ""
            problem = f"docker compose {args[0]}: no answer in {timeout:.0f} s"
            raise ComposeError(problem, output) from None
        except OSError as exc:
            raise ComposeError(f"docker compose {args[0]}: {exc.strerror}") from None
        if done.returncode != 0:
            raise ComposeError(
                f"docker compose {args[0]} exited with code {done.returncode}",
                done.stderr + done.stdout,
            )
        return done.stdout
