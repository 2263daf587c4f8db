"""Helpers shared by the tests (plain functions and types; fixtures live in conftest.py)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class CheckRun:
    """A finished `pytest` run of the checks suite: exit code, output, findings.json rows."""

    def __init__(self, process: subprocess.CompletedProcess[str], reports: Path) -> None:
        self.exit_code = process.returncode
        self.output = process.stdout + process.stderr
        # This run's own folder, as it printed it: `latest` may already be another run's.
        printed = re.search(r"opsbook report: (\S+)/report\.html", self.output)
        folder = Path(printed[1]) if printed else reports / "latest"
        self.reports = reports
        found = folder / "findings.json"
        self.document = json.loads(found.read_text()) if found.exists() else {}
        self.rows: list[dict[str, Any]] = self.document.get("findings", [])

    def row(self, check_id: str, target: str | None = None) -> dict[str, Any]:
        matches = [
            r for r in self.rows if r["check_id"] == check_id and target in (None, r["target"])
        ]
        assert len(matches) == 1, f"{check_id}[{target}]: {len(matches)} rows\n{self.output}"
        return matches[0]

    def outcome(self, check_id: str, target: str | None = None) -> str:
        return str(self.row(check_id, target)["outcome"])

    def outcomes(self) -> dict[tuple[str, str | None], str]:
        return {(r["check_id"], r["target"]): r["outcome"] for r in self.rows}


RunChecks = Callable[..., CheckRun]


def eventually(
    condition: Callable[[], object], what: str | None = None, deadline_s: float = 20.0
) -> None:
    """Wait until condition() is true; fail the test, saying what, after deadline_s."""
    end = time.monotonic() + deadline_s
    while not condition():
        said = what or condition.__doc__ or getattr(condition, "__name__", "condition")
        assert time.monotonic() < end, f"not within {deadline_s:g} s: {said}"
        time.sleep(0.1)


def fill(filesystem: Path) -> None:
    """Write zeros until the filesystem has no room left."""
    filler = filesystem / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
    assert shutil.disk_usage(filesystem).free == 0


def started_between_scrapes(stop: Callable[[], None], start: Callable[[], None],
                            prometheus: Any, job: str) -> str:  # fmt: skip
    """Stop a service, and start it again just after Prometheus scraped it down: Prometheus
    then says "down" for a service that is up until its next scrape (the sandbox scrapes every
    2 s). Returns its scrape target ("job/instance"), once Prometheus was seen still saying
    "down" for it after the start."""
    from opsbook.probes import prometheus as probe

    def seen(up: str) -> bool:
        return any(t.job == job and t.up == up for t in probe.scrape_targets(prometheus))

    name = next(name for name in probe.last_scrapes(prometheus) if name.startswith(f"{job}/"))
    for _ in range(5):
        stop()
        eventually(lambda: seen("0"), f"Prometheus scraped {job} down")
        last = probe.last_scrapes(prometheus)[name].at
        eventually(lambda last=last: probe.last_scrapes(prometheus)[name].at != last)
        start()  # at most 2 s before the next scrape
        if seen("0"):
            return name
    raise AssertionError(f"{job} never started within one scrape interval")
