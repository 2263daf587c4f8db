"""The disk probe against real local facts: a 2 MiB tmpfs mounted for the test, this machine's
own paths, and real files with set modification times.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from opsbook.inventory import Host
from opsbook.probes.disk import disk_usage, entries, parse_df
from opsbook.probes.host import NotObserved
from opsbook.targets import HostTarget

LOCAL = HostTarget("local", Host())
KIB = 1024


def test_usage_of_a_small_filesystem(small_filesystem: Path) -> None:
    (small_filesystem / "filler").write_bytes(b"x" * 1800 * KIB)  # of 2048 KiB
    usage = disk_usage(LOCAL, str(small_filesystem), timeout_s=3)
    real = shutil.disk_usage(small_filesystem)
    assert (usage.filesystem, usage.mount) == ("tmpfs", str(small_filesystem))
    assert usage.size_bytes == real.total == 2048 * KIB
    assert (usage.used_bytes, usage.free_bytes) == (real.used, real.free)
    # df rounds its Capacity up: 1800 of 2048 KiB is 87.9 %, shown as 88.
    assert usage.used_percent == 88
    assert usage.free_mib == 0


def test_a_path_inside_is_measured_on_its_filesystem(small_filesystem: Path) -> None:
    inside = small_filesystem / "backups"
    inside.mkdir()
    usage = disk_usage(LOCAL, str(inside), timeout_s=3)
    assert (usage.path, usage.mount) == (str(inside), str(small_filesystem))


def test_a_missing_path_cannot_be_measured(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    with pytest.raises(NotObserved) as raised:
        disk_usage(LOCAL, str(missing), timeout_s=3)
    assert str(raised.value) == f"host local: {missing}: cannot measure: No such file or directory"
    assert raised.value.reason == "cannot measure: No such file or directory"


def test_a_path_not_created_yet_is_measured_on_its_nearest_parent(small_filesystem: Path) -> None:
    future = small_filesystem / "backups" / "daily"
    usage = disk_usage(LOCAL, str(future), timeout_s=3, nearest_existing=True)
    assert (usage.path, usage.mount) == (str(small_filesystem), str(small_filesystem))
    assert usage.size_bytes == 2048 * KIB


def test_a_mount_point_with_spaces() -> None:
    output = (
        "Filesystem     1024-blocks  Used Available Capacity Mounted on\n"
        "/dev/sdb1          1000   930        70      93% /mnt/my data\n"
    )
    usage = parse_df("/mnt/my data", output)
    assert usage is not None
    assert (usage.mount, usage.used_percent, usage.free_bytes) == ("/mnt/my data", 93, 70 * KIB)
    assert parse_df("/x", "df: /x: No such file or directory\n") is None


def _aged(path: Path, age_s: float) -> None:
    then = time.time() - age_s
    os.utime(path, (then, then))


def test_entries_lists_files_and_folders_with_sizes_and_ages(tmp_path: Path) -> None:
    (tmp_path / "old.log.1").write_bytes(b"x" * 3000)
    _aged(tmp_path / "old.log.1", 2 * 86400)
    folder = tmp_path / "opsbook-backup-20260101T000000Z"
    folder.mkdir()
    (folder / "dump").write_bytes(b"y" * 50_000)
    _aged(folder, 40 * 86400)
    (tmp_path / "link").symlink_to(tmp_path / "old.log.1")
    found = {Path(e.path).name: e for e in entries(LOCAL, str(tmp_path), timeout_s=3)}
    assert set(found) == {"old.log.1", folder.name}  # the symlink is not listed
    log, backup = found["old.log.1"], found[folder.name]
    assert (log.size_bytes, log.is_dir) == (3000, False)
    assert abs(log.age_s - 2 * 86400) < 5
    assert backup.is_dir
    assert backup.size_bytes >= 50_000  # du: the folder and what it holds
    assert abs(backup.age_s - 40 * 86400) < 5


def test_entries_of_a_missing_directory_cannot_be_listed(tmp_path: Path) -> None:
    with pytest.raises(NotObserved, match=r"cannot list: No such file or directory"):
        entries(LOCAL, str(tmp_path / "gone"), timeout_s=3)
