"""The application: the reference backend (HTTP) and its queue worker, sharing DIR/app.json.

app.json names the database, the Redis URL and the *files* holding the passwords, never the
passwords themselves.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import chatapp
from opsbook.loopback import http_status
from opsbook.releases import current_entry, releases_dir
from opsbook.sandbox.base import Component, Layout, require_port
from opsbook.sandbox.postgres import APP_ROLE, DATABASE
from opsbook.sandbox.process import Process, SandboxError
from opsbook.sandbox.redis import secret_name

# The directory that holds the chatapp package, so that the children import this very copy.
_SOURCE_ROOT = Path(chatapp.__file__).resolve().parent.parent


def write_app_config(layout: Layout, ports: dict[str, int]) -> Path:
    config = {
        "listen": {"host": "127.0.0.1", "port": ports["backend"]},
        "database": {
            "host": "127.0.0.1",
            "port": ports["postgres"],
            "dbname": DATABASE,
            "user": APP_ROLE,
            "password_file": str(layout.secret_file(APP_ROLE)),
        },
        "redis": {
            "url": f"redis://chat_app@127.0.0.1:{ports['redis']}/0",
            "password_file": str(layout.secret_file(secret_name("chat_app"))),
        },
    }
    # A person may have turned debug mode on by hand: keep it across restarts.
    if layout.app_config.exists():
        config["debug"] = bool(json.loads(layout.app_config.read_text()).get("debug", False))
    layout.app_config.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return layout.app_config


def backend_argv(sandbox_dir: Path) -> list[str]:
    """How the sandbox starts its backend: from the deployed release (DIR/releases/current)
    once there is one, else from the chatapp package."""
    entry = current_entry(releases_dir(sandbox_dir))
    if entry.is_file():
        return [sys.executable, str(entry)]
    return [sys.executable, "-m", "chatapp.backend"]


def _python_env() -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{_SOURCE_ROOT}{os.pathsep}{path}" if path else str(_SOURCE_ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Backend(Component):
    name = "backend"

    def _process(self) -> Process:
        return Process(
            name=self.name,
            # From the deployed release (DIR/releases/current) once there is one.
            argv=[*backend_argv(self.layout.dir), "--config", str(self.layout.app_config)],
            log=self.layout.log(self.name),
            pid_file=self.layout.pid_file(self.name),
            env=_python_env(),
            cwd=self.layout.dir,
        )  # fmt: skip

    def ready(self) -> bool:
        # Any answer will do: a backend whose database is down still runs (and says 503).
        return http_status(require_port(self), "/health") is not None


class Worker(Component):
    """A queue worker. `Worker(layout, None)` is the worker; `replica=2` and up are the extra
    workers of `Stack.scale`, each its own process named worker-N, with its own in-flight list
    (see chatapp.worker) and pid and ready files, logging into the same worker.log
    (so that the log check reads every worker's lines)."""

    name = "worker"

    def __init__(self, layout: Layout, port: int | None, replica: int = 1) -> None:
        if replica < 1:
            raise ValueError(f"worker replica {replica}: replicas count from 1")
        self.replica = replica
        self.name = "worker" if replica == 1 else f"worker-{replica}"
        super().__init__(layout, port)

    def _process(self) -> Process:
        return Process(
            name=self.name,
            argv=[
                sys.executable, "-m", "chatapp.worker",
                "--config", str(self.layout.app_config),
                "--name", self.name,
                "--ready-file", str(self.ready_file),
            ],
            log=self.layout.log("worker"),
            pid_file=self.layout.pid_file(self.name),
            env=_python_env(),
            cwd=self.layout.dir,
        )  # fmt: skip

    @property
    def ready_file(self) -> Path:
        return self.layout.run / f"{self.name}.ready"

    def prepare(self) -> None:
        self.ready_file.unlink(missing_ok=True)

    def ready(self) -> bool:
        # The worker writes this file once it has recovered its in-flight messages.
        return self.ready_file.exists()

    def requeue_in_flight(self) -> int:
        """Hand what this (stopped) worker holds in flight back to message_queue.

        For an extra worker stopped for good by a scale-down: no later start of its own would
        recover its list. Never for a running worker (its messages would be delivered twice).
        """
        import redis

        from chatapp.config import AppConfig
        from chatapp.worker import requeue_in_flight

        if self.is_running():
            raise SandboxError(f"{self.name} runs: its in-flight messages are its own")
        client = AppConfig.load(self.layout.app_config).redis_client()
        try:
            return requeue_in_flight(client, self.name)
        except redis.RedisError as exc:
            raise SandboxError(
                f"{self.name}: cannot hand its in-flight messages back to message_queue: {exc}"
            ) from None
        finally:
            client.close()
