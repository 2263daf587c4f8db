"""How saturated a host's CPUs are: the share of time runnable tasks waited for one.

Read through the host's testinfra backend (local, ssh, containers):

- Pressure stall information, /proc/pressure/cpu (Linux 4.20 or later, when not booted with
  psi=0): `some avg10` is the share of the last 10 s in which at least one runnable task waited
  for a CPU; `avg60` is kept as evidence.
- Without it, a one-second sample of /proc/stat: `procs_running` (the tasks running or
  runnable) read every 40 ms; a reading with more runnable tasks than CPUs is a moment in which
  a task waited. The reader itself runs while it reads, so it is left out of the count. The
  CPU time spent busy over the sample is kept as evidence.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from msgspec import Struct

from opsbook.probes.host import NotObserved, run

if TYPE_CHECKING:
    from opsbook.targets import HostTarget

PSI = "/proc/pressure/cpu"
SAMPLES = 25
SAMPLE_EVERY_S = 0.04

# One line per reading: online CPUs, procs_running, busy and total jiffies of the `cpu` line
# (busy: user nice system irq softirq steal; idle: idle iowait). Run with `sh -c`.
_SAMPLE = (
    f"i=0; while [ $i -lt {SAMPLES} ]; do "
    "awk '/^cpu /{b=$2+$3+$4+$7+$8+$9; t=b+$5+$6} /^cpu[0-9]/{n++} /^procs_running/{r=$2} "
    "END{print n, r, b, t}' /proc/stat; "
    f"sleep {SAMPLE_EVERY_S:g}; i=$((i+1)); done"
)
_PSI_SOME = re.compile(r"^some avg10=(\d+(?:\.\d+)?) avg60=(\d+(?:\.\d+)?)", re.M)


class CpuSaturation(Struct, frozen=True):
    """The share of time runnable tasks waited for a CPU, and how it was measured."""

    waiting_percent: float
    window_s: float  # the time it covers: 10 for PSI's avg10, the sample's length otherwise
    source: str  # "pressure stall information" or "/proc/stat sample"
    waiting_avg60_percent: float | None = None  # PSI only
    busy_percent: float | None = None  # /proc/stat only: CPU time not idle
    cpus: int | None = None  # /proc/stat only
    no_psi: str = ""  # why PSI could not be read, when the sample stood in for it

    @property
    def measured(self) -> str:
        """`some avg10` or `a 1 s /proc/stat sample`: what a report says it looked at."""
        if self.no_psi:
            return f"a {self.window_s:g} s /proc/stat sample; no PSI: {self.no_psi}"
        return "PSI some avg10"


def cpu_saturation(host: HostTarget, *, timeout_s: float, psi: str = PSI) -> CpuSaturation:
    """PSI's `some avg10` where the host has it, else a short /proc/stat sample.

    `psi` is the pressure file to read (another path shows the fallback on a host that has
    PSI).
    """
    answer = run(host, psi, "cat %s", psi, timeout_s=timeout_s)
    if answer.rc == 0:
        found = _PSI_SOME.search(answer.stdout)
        if found is None:
            raise NotObserved(host, psi, "no `some avg10=` line")
        return CpuSaturation(
            waiting_percent=float(found[1]),
            window_s=10.0,
            source="pressure stall information",
            waiting_avg60_percent=float(found[2]),
        )
    # No such file (kernel without PSI), or "Operation not supported" (booted with psi=0).
    return _stat_sample(host, no_psi=answer.why(), timeout_s=timeout_s)


def _stat_sample(host: HostTarget, *, no_psi: str, timeout_s: float) -> CpuSaturation:
    sample_s = SAMPLES * SAMPLE_EVERY_S
    answer = run(host, "/proc/stat", "sh -c %s", _SAMPLE, timeout_s=timeout_s + 2 * sample_s)
    readings = [line.split() for line in answer.stdout.splitlines()]
    readings = [r for r in readings if len(r) == 4 and all(x.isdigit() for x in r)]
    if answer.rc != 0 or len(readings) < 2:
        raise NotObserved(host, "/proc/stat", f"cannot sample: {answer.why()}")
    cpus = int(readings[0][0])
    # The awk that reads is running: the others wait when they outnumber the CPUs.
    waiting = sum(1 for r in readings if int(r[1]) - 1 > cpus)
    busy = int(readings[-1][2]) - int(readings[0][2])
    total = int(readings[-1][3]) - int(readings[0][3])
    return CpuSaturation(
        waiting_percent=round(100.0 * waiting / len(readings), 1),
        window_s=sample_s,
        source="/proc/stat sample",
        busy_percent=round(100.0 * busy / total, 1) if total > 0 else None,
        cpus=cpus,
        no_psi=no_psi,
    )


def busiest_processes(host: HostTarget, *, timeout_s: float, count: int = 5) -> list[str]:
    """The processes using the most CPU (`ps`'s share of each one's lifetime), as evidence of
    who saturates the host; empty when the host has no `ps`."""
    answer = run(host, "ps", "ps -eo pid,pcpu,comm --sort=-pcpu --no-headers", timeout_s=timeout_s)
    if answer.rc != 0:
        return []
    return [" ".join(line.split()) for line in answer.stdout.splitlines()[:count]]
