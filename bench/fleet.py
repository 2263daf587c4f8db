"""Benchmark: a fleet of sandboxes checked with `pytest -m daily`, by size, and the all-hung bound.

    .venv/bin/python bench/fleet.py [--sizes 1 5 10] [--rounds 3]

Starts max(sizes) native sandboxes (each `sandbox up --dir`, its own name), then for each size
times `pytest -m daily --inventory=FOLDER` over that many of them, round after round (sizes take
turns, so the machine's noise falls on all alike): median wall time, its ratio to one
deployment, the CPU time of the run and of the whole machine meanwhile (the stacks answering
the checks included; over the cores, the least wall time that CPU allows), and the peak memory
of the run (the parent and its children: RUSAGE_CHILDREN's max resident set, the largest single
process). Then every sandbox is frozen (SIGSTOP) and the run over 1 and over all is timed once
each: the bound is the inventories' timeout (3 s) plus 5 s.
Each measure is taken with the children forked (the default) and spawned afresh
(`--fleet-start=spawn`), in the same rounds. The runs get Python's default bytecode cache, as
an operator's cron does (a PYTHONDONTWRITEBYTECODE of the caller's is left out: with it, pytest
rewrites and compiles every check module in every run).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from opsbook.sandbox.stack import Stack  # noqa: E402

ENVIRONMENT = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy since boot (every process, every core)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def timed(folder: Path, reports: Path, start: str = "fork") -> tuple[float, int, int, float, float]:
    """Seconds, exit code, peak resident memory (KiB), CPU seconds of one fleet run, and CPU
    seconds of the whole machine meanwhile (the stacks answering it too)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy = machine_busy()
    started = time.perf_counter()
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "-m", "daily", f"--fleet-start={start}"),
            *(f"--inventory={folder}", f"--reports-dir={reports}", "-p", "no:cacheprovider"),
        ],
        cwd=REPO,
        env=ENVIRONMENT,
        capture_output=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    busy = machine_busy() - busy
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return elapsed, done.returncode, after.ru_maxrss, cpu, busy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="opsbook-bench-fleet-"))
    base.chmod(0o755)  # PostgreSQL runs as its own OS user, which must reach the stacks
    stacks = [Stack(base / f"d{i:02}", f"d{i:02}") for i in range(max(args.sizes))]
    try:
        for stack in stacks:
            stack.up()
        folders = {}
        for size in args.sizes:
            folder = base / f"fleet-{size}"
            folder.mkdir()
            for stack in stacks[:size]:
                shutil.copy(stack.inventory_path, folder / f"{stack.name}.yaml")
            folders[size] = folder
        starts = ("fork", "spawn")  # side by side: forked children against fresh ones
        times: dict[tuple[str, int], list[float]] = {
            (how, size): [] for how in starts for size in args.sizes
        }
        cpus: dict[tuple[str, int], list[float]] = {key: [] for key in times}
        busy: dict[tuple[str, int], list[float]] = {key: [] for key in times}
        for size in args.sizes:  # warm-up, not counted
            timed(folders[size], base / "reports")
        for _ in range(args.rounds):
            for how, size in times:
                elapsed, code, _, cpu, machine = timed(folders[size], base / "reports", how)
                if code not in (0, 1):
                    print(f"fleet of {size} ({how}): exit {code}", file=sys.stderr)
                    return 1
                times[how, size].append(elapsed)
                cpus[how, size].append(cpu)
                busy[how, size].append(machine)
        cores = os.cpu_count() or 1
        print(f"{args.rounds} rounds, medians (min-max), on {cores} cores")
        for how in starts:
            ones = times[how, min(args.sizes)]
            one = statistics.median(ones)
            for size in args.sizes:
                samples = times[how, size]
                median = statistics.median(samples)
                # Each round's ratio, its two runs taken minutes apart at most: the machine's
                # slow drifts fall on both, where the ratio of two medians mixes rounds.
                ratios = [many / single for many, single in zip(samples, ones, strict=True)]
                print(
                    f"  {how:5} {size:3} deployments  {median:6.2f}s "
                    f"({min(samples):.2f}-{max(samples):.2f})  x{median / one:4.1f} of one, "
                    f"x{statistics.median(ratios):4.2f} by round "
                    f"({min(ratios):.2f}-{max(ratios):.2f}), "
                    f"CPU {statistics.median(cpus[how, size]):5.2f}s, machine "
                    f"{statistics.median(busy[how, size]):5.2f}s (over the cores: at least "
                    f"{statistics.median(busy[how, size]) / cores:4.2f}s)"
                )
        peak = timed(folders[max(args.sizes)], base / "reports")[2]
        print(f"  peak resident memory of one process: {peak // 1024} MiB")
        pids = [pid for stack in stacks for pid in stack.processes()]
        try:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):  # ended since it was listed
                    os.kill(pid, signal.SIGSTOP)
            for how in starts:
                for size in (min(args.sizes), max(args.sizes)):
                    elapsed, code, _, _, _ = timed(folders[size], base / "hung", how)
                    print(f"  all hung, {how:5} {size:3} deployments: {elapsed:6.2f}s, exit {code}")
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
    finally:
        for stack in stacks:
            stack.down()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
