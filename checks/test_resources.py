"""Host resources: the runbook's `df -h` and `free -m`."""

from __future__ import annotations

import re

import pytest

from opsbook import Severity, check
from remediation import disk

pytestmark = [pytest.mark.daily, pytest.mark.resources]

# The last line of `df -P PATH`: "/dev/vda  264212084 23359124 83031788  22% /".
_DF_LINE = re.compile(r"\s(?P<percent>\d+)%\s+(?P<mount>/.*)$")


@check("RES-001", Severity.HIGH, remediation=disk.delete_past_retention)
def test_data_filesystems_have_room(host, request, inventory, thresholds, finding) -> None:
    """Data filesystems are below the disk use limit.

    Risk: when a filesystem fills up, PostgreSQL stops accepting writes, Redis cannot save its
    snapshot and logs are lost: the chat stops storing messages.
    """
    name = request.node.callspec.params["host"]
    paths = inventory.hosts[name].filesystems
    if not paths:
        pytest.skip(f"{name}: no filesystems listed in the inventory")
    limit = thresholds.disk_used_percent
    problems = []
    used: list[int] = []
    outputs = []
    for path in paths:
        # `timeout`: df on a hung network mount never returns.
        df = host.run("timeout %s df -P -- %s", f"{thresholds.timeout_s:g}", path)
        outputs.append(f"$ df -P {path}\n{df.stdout}{df.stderr}")
        lines = df.stdout.strip().splitlines()
        match = _DF_LINE.search(lines[-1]) if df.rc == 0 and len(lines) > 1 else None
        if match is None:
            reason = (
                f"no answer within {thresholds.timeout_s:g}s"
                if df.rc == 124
                else (df.stderr.strip().rsplit(": ", 1)[-1] or "no use figure in df's output")
            )
            problems.append(f"{path}: cannot measure: {reason}")
            continue
        # df's own Capacity figure (rounded up), so the number is the one an operator sees.
        percent = int(match["percent"])
        used.append(percent)
        if percent > limit:
            problems.append(f"{path} is {percent}% full (max {limit:g}%)")
    finding.attach("df", "\n".join(outputs))
    if used:
        finding.observe(f"{max(used)}%", expected=f"<= {limit:g}%")
    assert not problems, f"{name}: " + "; ".join(problems)


@check("RES-002", Severity.MEDIUM)
def test_memory_use_is_below_the_limit(host, request, thresholds, finding) -> None:
    """Memory use of the host is below the limit.

    Risk: with little memory available the kernel's OOM killer ends a process, often the
    largest one: PostgreSQL or Redis, and the chat goes down with it.
    """
    name = request.node.callspec.params["host"]
    limit = thresholds.memory_used_percent
    meminfo = host.run("cat /proc/meminfo")
    assert meminfo.rc == 0, f"{name}: cannot read /proc/meminfo: {meminfo.stderr.strip()}"
    finding.attach("meminfo", meminfo.stdout)
    kib = {
        key: int(value) for key, value in re.findall(r"^(\w+):\s+(\d+)", meminfo.stdout, flags=re.M)
    }
    # MemAvailable (not MemFree) is the kernel's estimate of what can be had without swapping:
    # page cache counts as available, so a busy file server is not reported as full.
    assert kib.get("MemTotal"), f"{name}: /proc/meminfo has no MemTotal"
    assert "MemAvailable" in kib, f"{name}: /proc/meminfo has no MemAvailable (kernel < 3.14)"
    percent = 100.0 * (1 - kib["MemAvailable"] / kib["MemTotal"])
    finding.observe(f"{percent:.1f}%", expected=f"<= {limit:g}%")
    assert percent <= limit, f"{name}: memory is {percent:.1f}% used (max {limit:g}%)"
