"""Pushgateway: where the runs against the sandbox report their metrics (the inventory's
`metrics.pushgateway`), scraped by the sandbox's Prometheus, so that its dead-man alert
(OpsbookRunMissing) means "no opsbook run for too long" there as in production.

Debian's prometheus-pushgateway on loopback; the pushed groups are kept in
DIR/pushgateway/metrics.data across restarts (written at every stop), so that a sandbox brought
down and up again still knows when its last run reported.
"""

from __future__ import annotations

from pathlib import Path

from opsbook.loopback import http_status
from opsbook.sandbox.base import Component, require_port
from opsbook.sandbox.process import Process

BINARY = "prometheus-pushgateway"


class Pushgateway(Component):
    name = "pushgateway"

    @property
    def home(self) -> Path:
        return self.layout.dir / "pushgateway"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{require_port(self)}"

    def _process(self) -> Process:
        return Process(
            name=self.name,
            argv=[
                BINARY,
                f"--web.listen-address=127.0.0.1:{self.port}",
                # Debian's default file is shared by every gateway of the host.
                f"--persistence.file={self.home / 'metrics.data'}",
                "--log.level=info",
            ],
            log=self.layout.log(self.name),
            pid_file=self.layout.pid_file(self.name),
            cwd=self.home,
        )

    def prepare(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)

    def ready(self) -> bool:
        return http_status(require_port(self), "/-/ready") == 200
