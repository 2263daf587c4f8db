"""A real container registry for the tests (Debian's docker-registry, the Distribution project's
registry 2.8), private to a temporary folder, on a loopback port, over plain HTTP.

The engine must trust it over plain HTTP: Docker does so for 127.0.0.0/8 on its own; Podman only
for the registries its registries.conf lists as insecure, which scripts/setup-container-engine
writes for the fixed ports below (a running Podman API keeps the configuration it first read, so
the ports are fixed and written once at set-up, never while tests share the engine). The server
takes the first of them that is free.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from opsbook.loopback import http_status
from opsbook.waiting import until

DOCKER_REGISTRY = Path("/usr/bin/docker-registry")
# The same ports as scripts/setup-container-engine's 50-opsbook-test-registry.conf.
PORTS = (5000, 5001, 5002, 5003, 5004)
READY_DEADLINE_S = 20.0


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the registry (Go) listens: a port whose last connections are in TIME_WAIT is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class Registry:
    """One docker-registry process on 127.0.0.1, started and stopped by the fixture that owns
    it; its storage is a temporary folder removed when it stops."""

    def __init__(self) -> None:
        port = next((p for p in PORTS if _free(p)), None)
        if port is None:
            raise RuntimeError(f"no free port for the test registry among 127.0.0.1:{PORTS}")
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="opsbook-registry-"))
        self.config = self.dir / "config.yml"
        self.config.write_text(
            "version: 0.1\n"
            # Its access log (kept) shows every request: a test sees the manifests pulled.
            "log:\n  level: warn\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.dir / 'data'}\n"
            # A shared secret of its own, or the registry warns about a generated one.
            f"http:\n  addr: 127.0.0.1:{port}\n  secret: {os.urandom(16).hex()}\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """host:port, as an image reference names the registry."""
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        path = self.dir / "registry.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> None:
        with (self.dir / "registry.log").open("ab") as log:
            self.process = subprocess.Popen(
                [str(DOCKER_REGISTRY), "serve", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        process = self.process
        # GET /v2/ answers 200 once the registry serves its API (the Registry API's version check).
        ready = until(
            lambda: process.poll() is not None or http_status(self.port, "/v2/") == 200,
            READY_DEADLINE_S,
            0.05,
        )
        if process.poll() is not None or not ready:
            log = self.log()
            self.stop()
            raise RuntimeError(f"docker-registry did not start on {self.address}: {log}")

    def stop(self) -> None:
        """Stop the server and remove its folder (the images pushed to it)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)
