"""Prometheus: scrapes the backend and itself every 2 s; rule files from DIR/prometheus/rules/.

The repository's alert rules (alerts/*.yml) are copied into the rules dir at every start, as
they are: the same file, with the production `for:` durations, that a deployment ships.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import opsbook
from opsbook.loopback import http_json, http_status
from opsbook.sandbox.base import Component, Layout, require_port
from opsbook.sandbox.process import Process, SandboxError

BINARY = "/usr/bin/prometheus"
# The repository's alerts/ dir, next to the opsbook package (an editable install or a checkout).
ALERTS = Path(opsbook.__file__).parent / "alerts"  # shipped inside the package


class Prometheus(Component):
    name = "prometheus"

    def __init__(self, layout: Layout, port: int | None, backend_port: int) -> None:
        self.backend_port = backend_port
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
