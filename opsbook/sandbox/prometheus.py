"""Prometheus: scrapes the backend, the Pushgateway and itself every 2 s; rule files from
DIR/prometheus/rules/.

The repository's alert rules (alerts/*.yml) are copied into the rules dir at every start, as
they are: the same files, with the production `for:` durations, that a deployment ships. The
Pushgateway holds what the runs against the sandbox pushed (opsbook_last_run_*), so the
dead-man alert OpsbookRunMissing watches them as it would in production.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import opsbook
from opsbook.inventory import compose_size_bytes
from opsbook.loopback import http_json, http_status
from opsbook.sandbox.base import Component, Layout, require_port
from opsbook.sandbox.process import Process, SandboxError

BINARY = "/usr/bin/prometheus"
# The repository's alerts/ dir, next to the opsbook package (an editable install or a checkout).
ALERTS = Path(opsbook.__file__).parent / "alerts"  # shipped inside the package
# The shipped file of job:memory_limit_bytes, which a stack with limits of its own replaces.
LIMITS_FILE = "memory-limits.rules.yml"


class Prometheus(Component):
    name = "prometheus"

    def __init__(
        self, layout: Layout, port: int | None, backend_port: int, pushgateway_port: int
    ) -> None:
        self.backend_port = backend_port
        self.pushgateway_port = pushgateway_port
        super().__init__(layout, port)

    @property
    def home(self) -> Path:
        return self.layout.dir / "prometheus"

    @property
    def config(self) -> Path:
        return self.home / "prometheus.yml"

    @property
    def rules(self) -> Path:
        return self.home / "rules"

    def _process(self) -> Process:
        return Process(
            name=self.name,
            argv=[
                BINARY,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.home / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                "--log.level=info",
            ],
            log=self.layout.log(self.name),
            pid_file=self.layout.pid_file(self.name),
            cwd=self.home,
        )

    def render(self) -> str:
        return f"""global:
  scrape_interval: 2s
  scrape_timeout: 1s
  evaluation_interval: 2s

rule_files:
  - "{self.rules}/*.yml"

scrape_configs:
  - job_name: backend
    static_configs:
      - targets: ["127.0.0.1:{self.backend_port}"]
  - job_name: prometheus
    static_configs:
      - targets: ["127.0.0.1:{require_port(self)}"]
  # The runs' metrics keep the labels they were pushed with (job="opsbook", deployment,
  # selection, instance: the runner); the gateway's own metrics get job="pushgateway".
  - job_name: pushgateway
    honor_labels: true
    static_configs:
      - targets: ["127.0.0.1:{self.pushgateway_port}"]
"""

    def prepare(self) -> None:
        self.rules.mkdir(parents=True, exist_ok=True)
        shipped = sorted(ALERTS.glob("*.yml"))
        if not shipped:
            raise SandboxError(f"prometheus: no alert rules files in {ALERTS}")
        for path in shipped:
            shutil.copyfile(path, self.rules / path.name)
        self.config.write_text(self.render(), encoding="utf-8")

    def ready(self) -> bool:
        # Ready means monitoring is live: every target scraped once (up or down), so that a
        # daily run right after `up` does not find Prometheus without any `up` series.
        if http_status(require_port(self), "/-/ready") != 200:
            return False
        answer = http_json(require_port(self), "/api/v1/targets?state=active")
        targets = (answer or {}).get("data", {}).get("activeTargets", [])
        return bool(targets) and all(t.get("health") in ("up", "down") for t in targets)


def memory_limit_rules(limits: Mapping[str, int], source: str) -> str:
    """A memory-limits.rules.yml recording each job's limit (job:memory_limit_bytes) for
    HighMemoryUsage: the same group and rules as the shipped file, other figures."""
    import yaml  # only the compose stack writes one

    rules = [
        {"record": "job:memory_limit_bytes", "expr": f"vector({limit})", "labels": {"job": job}}
        for job, limit in sorted(limits.items())
    ]
    head = f"# Written by opsbook from {source}: the limits the engine enforces.\n"
    document = {"groups": [{"name": "memory-limits", "rules": rules}]}
    return head + yaml.safe_dump(document, sort_keys=False)


def compose_memory_limits(compose: Mapping[str, Any], services: Iterable[str]) -> dict[str, int]:
    """The memory limit in bytes (deploy.resources.limits.memory, or mem_limit) of each of
    these services of a compose file that has one."""
    found: dict[str, int] = {}
    declared = compose.get("services") or {}
    for name in services:
        service = declared.get(name) or {}
        limits = ((service.get("deploy") or {}).get("resources") or {}).get("limits") or {}
        value = limits.get("memory") or service.get("mem_limit")
        if value:
            found[name] = _bytes(value)
    return found


def _bytes(value: str | int) -> int:
    try:
        return compose_size_bytes(value)
    except ValueError as exc:
        raise SandboxError(f"compose: memory: {exc}") from None
