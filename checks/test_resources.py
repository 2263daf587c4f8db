"""Host resources: the runbook's `df -h` and `free -m`."""

from __future__ import annotations

from pathlib import Path

import pytest

from opsbook import Finding, HostTarget, Inventory, Severity, Thresholds, Unit, check
from opsbook.probes.disk import DiskUsage, disk_usage
from opsbook.probes.host import NotObserved, memory
from opsbook.remediation import disk

pytestmark = [pytest.mark.daily, pytest.mark.resources]


def written_by_the_stack(host: HostTarget, inventory: Inventory) -> list[str]:
    """Where the stack writes on this host, besides the filesystems the inventory lists: the
    backups and the application data (on the runner's own host, where the inventory's paths
    are) and the folders of the host's logs. A full backups volume stops the backups first."""
    paths = [str(Path(log).parent) for log in host.spec.logs]
    if host.spec.spec.startswith("local://") and inventory.backup is not None:
        paths += [str(inventory.backup.dir), *map(str, inventory.backup.data_paths)]
    return list(dict.fromkeys(paths))


@check("RES-001", Severity.HIGH, remediation=disk.delete_past_retention)
def test_data_filesystems_have_room(
    host: HostTarget, inventory: Inventory, thresholds: Thresholds, finding: Finding
) -> None:
    """Data filesystems are below the disk use limit.

    Risk: when a filesystem fills up, PostgreSQL stops accepting writes, Redis cannot save its
    snapshot and logs are lost: the chat stops storing messages.
    """
    wanted = [(path, False) for path in host.spec.filesystems]
    wanted += [(path, True) for path in written_by_the_stack(host, inventory)]
    if not wanted:
        pytest.skip(f"{host.label}: no filesystems listed in the inventory")
    limit = thresholds.disk_used_percent
    measured: list[DiskUsage] = []
    unmeasured: list[str] = []
    for path, nearest in wanted:
        try:
            usage = disk_usage(host, path, timeout_s=thresholds.timeout_s, nearest_existing=nearest)
        except NotObserved as exc:
            unmeasured.append(f"{path}: {exc.reason}")
            continue
        if all(usage.mount != other.mount for other in measured):  # each filesystem once
            measured.append(usage)
    finding.attach("df", measured)
    full = [f"{u.path} is {u.used_percent} % full" for u in measured if u.used_percent > limit]
    # A hung mount must not hide a full one: what is known to be full fails the check.
    if unmeasured and not full:
        finding.not_evaluated("; ".join(unmeasured))
    finding.expect(
        max(u.used_percent for u in measured),
        f"<= {limit:g}",
        ok=not full,
        unit=Unit.PERCENT,
        problem="; ".join(full + unmeasured),
    )


@check("RES-002", Severity.MEDIUM)
def test_memory_use_is_below_the_limit(
    host: HostTarget, thresholds: Thresholds, finding: Finding
) -> None:
    """Memory use of the host is below the limit.

    Risk: with little memory available the kernel's OOM killer ends a process, often the
    largest one: PostgreSQL or Redis, and the chat goes down with it.
    """
    limit = thresholds.memory_used_percent
    used = memory(host, timeout_s=thresholds.timeout_s)
    finding.attach("memory", used)
    finding.expect(
        round(used.used_percent, 1),
        f"<= {limit:g}",
        ok=used.used_percent <= limit,
        unit=Unit.PERCENT,
        problem=f"memory is {used.used_percent:.1f} % used",
    )
