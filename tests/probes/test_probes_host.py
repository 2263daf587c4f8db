"""The host probes against this machine: its memory, its clock, and a command that really
blocks (a read from a FIFO nobody writes to), which the `timeout` guard must cut short.

A hung network mount cannot be made here; the FIFO blocks the same way (in the kernel, in an
uninterruptible wait for data that never comes) as far as the guard is concerned.
"""

from __future__ import annotations

import os
import re
import time
from datetime import datetime
from pathlib import Path

import pytest

from opsbook.inventory import Host
from opsbook.probes.host import NotObserved, memory, run
from opsbook.probes.logs import clock, log_tail
from opsbook.targets import HostTarget

LOCAL = HostTarget("local", Host())


def test_memory_is_what_proc_meminfo_says() -> None:
    kib = dict(re.findall(r"^(\w+):\s+(\d+)", Path("/proc/meminfo").read_text(), flags=re.M))
    found = memory(LOCAL, timeout_s=3)
    assert found.total_bytes == int(kib["MemTotal"]) * 1024
    # Other tenants of this machine allocate and free meanwhile: the same figure, near enough.
    assert abs(found.available_bytes - int(kib["MemAvailable"]) * 1024) < found.total_bytes / 10
    assert 0 < found.used_percent < 100


def test_clock_is_the_hosts_own_time_and_zone() -> None:
    now = clock(LOCAL, timeout_s=3)
    assert abs(now.timestamp() - time.time()) < 2
    assert now.utcoffset() == datetime.now().astimezone().utcoffset()


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "stuck.log"
    os.mkfifo(path)
    return path


def test_a_command_that_blocks_is_cut_at_the_timeout(fifo: Path) -> None:
    started = time.monotonic()
    with pytest.raises(NotObserved) as raised:
        run(LOCAL, str(fifo), "cat -- %s", str(fifo), timeout_s=0.5)
    assert time.monotonic() - started < 3
    assert str(raised.value) == f"host local: {fifo}: no answer within 0.5s"


def test_a_log_that_blocks_is_not_observed(fifo: Path) -> None:
    started = time.monotonic()
    with pytest.raises(NotObserved, match=r"no answer within 0\.5s"):
        log_tail(LOCAL, str(fifo), timeout_s=0.5)
    assert time.monotonic() - started < 3


def test_a_command_that_fails_gives_its_reason(tmp_path: Path) -> None:
    answer = run(LOCAL, "x", "cat -- %s", str(tmp_path / "gone"), timeout_s=3)
    assert (answer.rc, answer.why()) == (1, "No such file or directory")
