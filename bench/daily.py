"""Benchmark: `pytest -m daily` against the sandbox, its start-up cost, and the runbook's bash.

Run with the sandbox up (`python -m opsbook sandbox up`):

    .venv/bin/python bench/daily.py [--runs 15] [--baseline OTHER_CHECKOUT]

--baseline adds the daily run of another checkout (its own .venv, say a worktree of an earlier
commit: `git worktree add /tmp/before COMMIT`) to the same rounds, for before/after numbers
measured side by side.

The three commands are run in turn, round after round, so that the machine's noise falls on
all of them alike; medians and ratios are printed, with how many conditions each one checks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def bash_environment(inventory_path: Path) -> dict[str, str]:
    inventory = yaml.safe_load(inventory_path.read_text())
    sandbox = Path(inventory["sandbox"]["dir"])
    postgres = inventory["postgres"]["chatdb"]
    redis_port = inventory["redis"]["queue"]["url"].rsplit(":", 1)[1].split("/")[0]
    return {
        **os.environ,
        "BACKEND_URL": inventory["http"]["backend"]["url"],
        "FRONTEND_URL": inventory["http"]["frontend"]["url"],
        "PGHOST": postgres["host"],
        "PGPORT": str(postgres["port"]),
        "REDIS_PORT": redis_port,
        "REDISCLI_AUTH": (sandbox / "secrets" / "redis-opsbook.password").read_text().strip(),
        "DATA_DIR": str(sandbox),
    }


def timed(command: list[str], env: dict[str, str], cwd: Path = REPO) -> tuple[float, int]:
    started = time.perf_counter()
    process = subprocess.run(command, cwd=cwd, env=env, capture_output=True, check=False)
    return time.perf_counter() - started, process.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--inventory", type=Path, default=REPO / ".opsbook/sandbox/inventory.yaml")
    parser.add_argument("--baseline", type=Path, help="another checkout to time side by side")
    args = parser.parse_args()
    if not args.inventory.exists():
        print(f"no sandbox inventory at {args.inventory}: run `make sandbox-up`", file=sys.stderr)
        return 2
    pytest = [sys.executable, "-m", "pytest", "-q", f"--inventory={args.inventory}"]
    reports = tempfile.mkdtemp(prefix="opsbook-bench-")
    commands = {
        "pytest -m daily": [*pytest, f"--reports-dir={reports}", "-m", "daily"],
        "start-up, no check selected": [*pytest, "-m", "daily and not daily"],
        "runbook bash script": ["bash", str(REPO / "bench" / "daily-health.sh")],
    }
    where = {name: REPO for name in commands}
    if args.baseline:
        name = f"baseline {args.baseline.name}: -m daily"
        base_python = str(args.baseline.resolve() / ".venv" / "bin" / "python")
        commands[name] = [base_python, *pytest[1:], f"--reports-dir={reports}-base", "-m", "daily"]
        where[name] = args.baseline.resolve()
    # As cron would run it: bytecode (and pytest's rewritten-assertion cache) written and reused.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("OPSBOOK_") and k != "PYTHONDONTWRITEBYTECODE"
    }
    bash_env = bash_environment(args.inventory)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for name, command in commands.items():  # warm-up round, not counted
        timed(command, bash_env if "bash" in name else env, where[name])
    for _ in range(args.runs):
        for name, command in commands.items():
            elapsed, code = timed(command, bash_env if "bash" in name else env, where[name])
            expected = 5 if "no check" in name else 0
            if code != expected:
                print(f"{name}: exit {code} (expected {expected})", file=sys.stderr)
                return 1
            times[name].append(elapsed)
    latest = json.loads((Path(reports) / "latest" / "findings.json").read_text())
    conditions = {
        "pytest -m daily": len(latest["findings"]),
        "start-up, no check selected": 0,
        "runbook bash script": 6,
    }
    for name in commands.keys() - conditions.keys():
        found = json.loads((Path(f"{reports}-base") / "latest" / "findings.json").read_text())
        conditions[name] = len(found["findings"])
    baseline = statistics.median(times["runbook bash script"])
    print(f"{args.runs} rounds, medians (min-max), on {os.cpu_count()} cores")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(
            f"  {name:30} {median:6.3f}s ({min(samples):.3f}-{max(samples):.3f})"
            f"  x{median / baseline:5.1f} of bash   conditions: {conditions[name]}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
