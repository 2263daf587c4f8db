"""Benchmark: time from a killed backend to a verified healthy one, with --remediate=apply.

Run with the sandbox up (`python -m opsbook sandbox up`):

    .venv/bin/python bench/remediate.py [--runs 7]

Each round SIGKILLs the backend's process group, then times `pytest -m daily --remediate=apply
--allow=restart` until it exits with HEALTH-001 FIXED. The restart budget is lifted for the
benchmark (it would brake after 2 restarts an hour, as it should in production).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--inventory", type=Path, default=REPO / ".opsbook/sandbox/inventory.yaml")
    args = parser.parse_args()
    if not args.inventory.exists():
        print(f"no sandbox inventory at {args.inventory}: run `make sandbox-up`", file=sys.stderr)
        return 2
    from opsbook.inventory import load_inventory
    from opsbook.sandbox.stack import Stack

    inventory = load_inventory(args.inventory)
    assert inventory.sandbox is not None
    stack = Stack(inventory.sandbox.dir)
    reports = Path(tempfile.mkdtemp(prefix="opsbook-bench-"))
    env = {
        **{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
        "OPSBOOK__REMEDIATION__BUDGETS__RESTART": "{count: 100000, per_s: 1}",
    }
    command = [
        sys.executable, "-m", "pytest", "-q", f"--inventory={args.inventory}",
        f"--reports-dir={reports}", "-m", "daily", "--remediate=apply", "--allow=restart",
    ]  # fmt: skip
    times = []
    for _ in range(args.runs):
        pid = stack.component("backend").pid()
        assert pid is not None, "the backend is not running"
        os.killpg(pid, signal.SIGKILL)
        started = time.perf_counter()
        subprocess.run(command, cwd=REPO, env=env, capture_output=True, check=False)
        elapsed = time.perf_counter() - started
        findings = json.loads((reports / "latest" / "findings.json").read_text())["findings"]
        (row,) = [r for r in findings if r["check_id"] == "HEALTH-001" and r["target"] == "backend"]
        if row["outcome"] != "fixed":
            print(f"not fixed: {row['outcome']} {row.get('remediation_attempt')}", file=sys.stderr)
            return 1
        times.append(elapsed)
    print(
        f"killed backend -> verified healthy (whole daily run with --remediate=apply): "
        f"median {statistics.median(times):.2f}s (min {min(times):.2f}, max {max(times):.2f}) "
        f"over {args.runs} runs"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
