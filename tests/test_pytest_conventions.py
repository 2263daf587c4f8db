"""pytest's conventions hold for a checks run: installed plugins, -n, --lf, --ff, --sw.

The real checks suite runs in a subprocess from the checkout, as an operator runs it, against
an inventory whose PostgreSQL and Redis refuse connections (port 9 on loopback): every check
that needs them is an ERROR in a few milliseconds, and nothing else is needed to run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
INVENTORY = """\
name: refused
postgres:
  chatdb: {host: 127.0.0.1, port: 9}
redis:
  queue: {url: "redis://127.0.0.1:9/0"}
"""


Run = Callable[..., tuple[int, str, list[dict[str, Any]]]]


@pytest.fixture
def run(tmp_path: Path) -> Run:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(INVENTORY)

    def checks(*args: str) -> tuple[int, str, list[dict[str, Any]]]:
        reports = tmp_path / "reports"
        environment = {
            k: v for k, v in os.environ.items() if not k.startswith(("OPSBOOK", "PYTEST"))
        }
        process = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-m", "daily",
             f"--inventory={inventory}", f"--reports-dir={reports}",
             "-o", f"cache_dir={tmp_path / 'cache'}", *args],
            cwd=REPO, env=environment, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        output = process.stdout + process.stderr
        printed = re.search(r"opsbook report: (\S+)/report\.html", output)
        rows = []
        if printed:
            rows = json.loads((Path(printed[1]) / "findings.json").read_text())["findings"]
        return process.returncode, output, rows

    return checks


def _bad(rows: list[dict[str, Any]]) -> set[object]:
    return {row["nodeid"] for row in rows if row["outcome"] in ("failed", "error")}


def test_last_failed_runs_only_what_did_not_pass(run: Run) -> None:
    code, _, first = run()
    assert code == 1, "DB-001 and QUEUE-001 fail; the other checks could not be evaluated"
    _, output, again = run("--lf")
    assert {row["nodeid"] for row in again} == _bad(first), output
    assert len(again) < len(first)


def test_failed_first_runs_them_before_the_rest(run: Run) -> None:
    _, _, first = run()
    _, output, again = run("--ff")
    assert len(again) == len(first)
    # -q's progress line: one letter a check, in the order they ran.
    progress = output.splitlines()[0].split()[0]
    bad = len(_bad(first))
    assert set(progress[:bad]) <= {"F", "E"}, progress
    assert set(progress[bad:]) <= {".", "s"}, progress


def test_stepwise_stops_at_the_first_check_not_passing(run: Run) -> None:
    _, output, rows = run("--sw")
    assert "Interrupted: Test failed, continuing from this test next run." in output, output
    assert len(_bad(rows)) == 1


def test_xdist_runs_the_checks_in_workers_with_the_same_findings(run: Run) -> None:
    pytest.importorskip("xdist")
    code, _, serial = run()
    parallel_code, output, parallel = run("-n", "2")
    assert parallel_code == code, output
    assert {(r["nodeid"], r["outcome"]) for r in parallel} == {
        (r["nodeid"], r["outcome"]) for r in serial
    }


def test_testinfra_hosts_option_is_refused_in_one_line(run: Run) -> None:
    code, output, _ = run("--hosts=ssh://somewhere")
    assert code == 4, output
    assert "--hosts: opsbook's hosts come from the inventory" in output
    assert "Traceback" not in output
