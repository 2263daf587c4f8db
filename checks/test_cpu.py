"""Host CPU: the runbook's CPU optimisation, measured as saturation rather than use."""

from __future__ import annotations

import pytest

from opsbook import Finding, HostTarget, Severity, Thresholds, Unit, check
from opsbook.probes.cpu import busiest_processes, cpu_saturation

pytestmark = [pytest.mark.daily, pytest.mark.resources]


@check("RES-003", Severity.MEDIUM)
def test_cpu_is_not_saturated(host: HostTarget, thresholds: Thresholds, finding: Finding) -> None:
    """The host's CPU is not saturated: runnable tasks seldom wait for a CPU.

    Risk: on a saturated host every request waits in the run queue; the chat's answers slow
    down and time out while each service still reports itself healthy. Measured by pressure
    stall information (/proc/pressure/cpu `some avg10`: the share of the last 10 s in which a
    runnable task waited), or by a one-second sample of /proc/stat where the kernel has no PSI.
    Not by the load average: a one-minute mean, too slow to react to and to test, which also
    counts tasks waiting for disks and means nothing without the number of CPUs.
    """
    limit = thresholds.cpu_pressure_percent
    saturation = cpu_saturation(host, timeout_s=thresholds.timeout_s)
    finding.attach("cpu", saturation)
    saturated = saturation.waiting_percent > limit
    if saturated:
        busiest = busiest_processes(host, timeout_s=thresholds.timeout_s)
        finding.attach("busiest processes (pid, %cpu, command)", busiest)
    finding.expect(
        round(saturation.waiting_percent, 1), f"<= {limit:g}",
        ok=not saturated, unit=Unit.PERCENT,
        problem=(
            f"runnable tasks waited for a CPU {saturation.waiting_percent:.1f} % of the last "
            f"{saturation.window_s:g} s ({saturation.measured})"
        ),
    )  # fmt: skip
