"""RES-003, host CPU saturation, on this machine: real busy processes saturate its CPUs and the
check fails; once they are gone it passes.

The machine is shared (other test runs keep its CPUs partly busy): the limits are set around
what the test itself causes, not the default. Busy processes run at nice 19, so the machine's
other tenants still get the CPU first; waiting nice-19 tasks count as pressure all the same.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from support import RunChecks, eventually

from opsbook.sandbox.stack import Stack

pytestmark = pytest.mark.sandbox

PSI = Path("/proc/pressure/cpu")
LIMIT = {"OPSBOOK__THRESHOLDS__CPU_PRESSURE_PERCENT": "85"}
QUIET = 65  # some avg10 below which this machine is not saturated by others' work


def some_avg10() -> float:
    found = re.search(r"^some avg10=(\d+(?:\.\d+)?)", PSI.read_text(), re.M)
    assert found, PSI.read_text()
    return float(found[1])


@contextlib.contextmanager
def busy_cpus() -> Iterator[None]:
    """Twice as many busy loops as CPUs, and two more: a runnable task always waits."""
    count = 2 * (os.cpu_count() or 1) + 2
    loops = [
        subprocess.Popen(["nice", "-n", "19", "sh", "-c", "while :; do :; done"])
        for _ in range(count)
    ]
    try:
        yield
    finally:
        for loop in loops:
            loop.kill()
        for loop in loops:
            loop.wait(timeout=10)


def within(condition: Callable[[], bool], deadline_s: float) -> bool:
    """Whether condition() comes true within deadline_s (polled every half second)."""
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.5)
    return True


@pytest.mark.breaks("RES-003")
@pytest.mark.skipif(not PSI.exists(), reason="this kernel has no pressure stall information")
def test_busy_processes_saturating_the_cpu_fail_res_003(run_checks: RunChecks) -> None:
    """The sandbox's host `local` is this machine. As for memory (RES-002), the limit is set for
    the test: between what this shared machine shows without the loops (mostly below 65 %) and
    with them (PSI's avg10 is a 10 s average: the test waits for it to climb to 85 % and to
    fall again, up to generous bounds). A machine already saturated by other work cannot show
    the difference: the test is then skipped, saying so."""
    if not within(lambda: some_avg10() < QUIET, 120):
        pytest.skip(f"this machine's CPU is saturated by other work (some avg10 {some_avg10()})")
    loaded, limit = 85, 75
    env = {"OPSBOOK__THRESHOLDS__CPU_PRESSURE_PERCENT": str(limit)}
    with busy_cpus():
        eventually(lambda: some_avg10() >= loaded, f"CPU pressure some avg10 >= {loaded}", 120)
        run = run_checks("--check=RES-003", env=env)
    row = run.row("RES-003", "local")
    assert row["outcome"] == "failed", run.output
    observed = re.fullmatch(
        r"host local: runnable tasks waited for a CPU (\d+\.\d) % of the last 10 s "
        rf"\(PSI some avg10\) \(expected <= {limit}\)",
        row["message"],
    )
    assert observed, row["message"]
    assert float(observed[1]) > limit
    assert (row["observed"], row["unit"]) == (float(observed[1]), "%")
    assert row["evidence"]["busiest processes (pid, %cpu, command)"]
    # Healthy again: the loops are gone and the pressure has fallen back below the limit.
    eventually(lambda: some_avg10() < limit - 2, f"CPU pressure some avg10 < {limit - 2}", 120)
    again = run_checks("--check=RES-003", env=env)
    assert again.outcome("RES-003", "local") == "passed", again.output


@pytest.fixture
def host_without_psi() -> Iterator[str]:
    """A Podman container with /proc/pressure masked, as on a kernel without PSI; /proc/stat
    is the machine's own (not namespaced), so the sample sees this machine's CPUs."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (scripts/setup-container-engine)")
    name = f"opsbook-no-psi-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        [
            "podman", "run", "-d", "--rm", "--name", name, "--security-opt",
            "mask=/proc/pressure", "docker.io/library/debian:bookworm-slim", "sleep", "600",
        ],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    try:
        yield name
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "0", name], capture_output=True, timeout=60)


@pytest.mark.breaks("RES-003")
def test_without_psi_a_proc_stat_sample_sees_the_saturated_cpu(
    sandbox: Stack, host_without_psi: str, tmp_path: Path, run_checks: RunChecks
) -> None:
    """The same check on a host without PSI (reached through testinfra's podman backend) falls
    back to a sample of /proc/stat's run queue. Its pass is only shown at the loosest limit: this
    shared machine's run queue holds more runnable tasks than CPUs most of the time, and a
    container sees the machine's /proc/stat."""
    raw = yaml.safe_load(sandbox.inventory_path.read_text())
    raw["hosts"] = {"nopsi": {"spec": f"podman://{host_without_psi}", "filesystems": ["/"]}}
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump(raw))
    with busy_cpus():
        run = run_checks("--check=RES-003", inventory=inventory, env=LIMIT)
    row = run.row("RES-003", "nopsi")
    assert row["outcome"] == "failed", run.output
    assert re.fullmatch(
        r"host nopsi: runnable tasks waited for a CPU (\d+\.\d) % of the last 1 s \(a 1 s "
        r"/proc/stat sample; no PSI: No such file or directory\) \(expected <= 85\)",
        row["message"],
    ), row["message"]
    assert row["observed"] > 85
    loosest = {"OPSBOOK__THRESHOLDS__CPU_PRESSURE_PERCENT": "100"}
    again = run_checks("--check=RES-003", inventory=inventory, env=loosest)
    assert again.outcome("RES-003", "nopsi") == "passed", again.output
