"""Benchmark: the compose stack's up time (cold and warm image cache), and `pytest -m daily` on
it next to the runbook's `docker-compose exec` bash script (bench/daily-health-compose.sh).

Needs the container engine (scripts/setup-container-engine):

    DOCKER_HOST=unix:///run/podman/podman.sock .venv/bin/python bench/compose.py \\
        [--cold-runs 1] [--warm-runs 3] [--rounds 5] [--no-cold]

Cold: the opsbook images are removed first (`docker rmi localhost/opsbook-*:dev`), so `up`
rebuilds them (the Debian base image stays: there is no registry to pull it again). Warm: the
images are there. Each `up` is followed by `down`. Then one stack stays up while the two daily
runs take turns, round after round, so the machine's noise falls on both alike; medians
(min-max) are printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from opsbook.compose import default_docker_host  # noqa: E402
from opsbook.sandbox.compose import ComposeStack  # noqa: E402

IMAGES = [f"localhost/opsbook-{name}:dev" for name in ("app", "postgres", "redis", "nginx",
                                                       "prometheus")]  # fmt: skip


def remove_images(docker_host: str | None) -> None:
    env = {**os.environ, **({"DOCKER_HOST": docker_host} if docker_host else {})}
    subprocess.run(["docker", "rmi", "--force", *IMAGES], env=env, capture_output=True, check=False)


def timed_up(directory: Path) -> float:
    stack = ComposeStack(directory)
    started = time.perf_counter()
    try:
        stack.up()
        return time.perf_counter() - started
    finally:
        stack.down()


def timed(command: list[str], env: dict[str, str]) -> tuple[float, int]:
    started = time.perf_counter()
    process = subprocess.run(command, cwd=REPO, env=env, capture_output=True, check=False)
    return time.perf_counter() - started, process.returncode


def summary(samples: list[float]) -> str:
    low, high = min(samples), max(samples)
    return f"{statistics.median(samples):7.2f}s ({low:.2f}-{high:.2f}, n={len(samples)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold-runs", type=int, default=1)
    parser.add_argument("--warm-runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-cold", action="store_true", help="keep the images (warm only)")
    args = parser.parse_args()
    docker_host = default_docker_host()
    if docker_host:
        os.environ["DOCKER_HOST"] = docker_host
    base = Path(tempfile.mkdtemp(prefix="opsbook-bench-compose-"))
    cold: list[float] = []
    warm: list[float] = []
    runs = ([] if args.no_cold else ["cold"] * args.cold_runs) + ["warm"] * args.warm_runs
    for index, kind in enumerate(runs):  # cold first: the warm runs reuse what it built
        if kind == "cold":
            remove_images(docker_host)
        elapsed = timed_up(base / f"up-{index}")
        (cold if kind == "cold" else warm).append(elapsed)
        print(f"  up ({kind}): {elapsed:.1f}s", file=sys.stderr)

    stack = ComposeStack(base / "daily")
    inventory_path = stack.up()
    try:
        inventory = yaml.safe_load(inventory_path.read_text())
        reports = tempfile.mkdtemp(prefix="opsbook-bench-reports-")
        environment = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("OPSBOOK_") and k != "PYTHONDONTWRITEBYTECODE"
        }
        # The backend logs errors while PostgreSQL initialises during `up` (COMPOSE-006 would
        # report them for 5 minutes): a short log window keeps both runs at exit 0.
        pytest_env = {**environment, "OPSBOOK_COMPOSE_DIR": str(stack.dir),
                      "OPSBOOK__THRESHOLDS__LOG_WINDOW_S": "5"}  # fmt: skip
        bash_env = {
            **environment,
            "COMPOSE_PROJECT": stack.project,
            "COMPOSE_FILE": str(stack.compose_file),
            "DOCKER_HOST": stack.docker_host or "",
            "BACKEND_URL": inventory["http"]["backend"]["url"],
            "FRONTEND_URL": inventory["http"]["frontend"]["url"],
            "DATA_DIR": str(stack.dir),
        }
        commands = {
            "pytest -m daily": (
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    "-q",
                    f"--inventory={inventory_path}",
                    f"--reports-dir={reports}",
                    "-m",
                    "daily",
                ],
                pytest_env,
            ),
            "runbook bash (docker compose exec)": (
                ["bash", str(REPO / "bench" / "daily-health-compose.sh")],
                bash_env,
            ),
        }
        time.sleep(6)  # past the start-up's error lines (see above)
        for command, env in commands.values():  # warm-up round, not counted
            timed(command, env)
        times: dict[str, list[float]] = {name: [] for name in commands}
        codes: dict[str, set[int]] = {name: set() for name in commands}
        for _ in range(args.rounds):
            for name, (command, env) in commands.items():
                elapsed, code = timed(command, env)
                times[name].append(elapsed)
                codes[name].add(code)
    finally:
        stack.down()
        shutil.rmtree(base, ignore_errors=True)

    print(f"compose stack on {docker_host or 'the default engine'}, {os.cpu_count()} cores")
    if cold:
        print(f"  up, cold (images rebuilt)        {summary(cold)}")
    print(f"  up, warm (images cached)         {summary(warm)}")
    baseline = statistics.median(times["runbook bash (docker compose exec)"])
    for name, samples in times.items():
        ratio = statistics.median(samples) / baseline
        print(f"  {name:32} {summary(samples)}  x{ratio:4.1f} of bash  exit {sorted(codes[name])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
