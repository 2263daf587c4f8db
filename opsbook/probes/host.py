"""A host's commands and its memory, read through its testinfra backend.

Every command runs under `timeout N` on the host: a command that hangs there (df on a hung
network mount, a tail on a stuck disk) costs the check N seconds and says so, never the run.
A fact that cannot be read raises `NotObserved`, a `NotEvaluated` that names the host, what
was looked at and why.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from msgspec import Struct

from opsbook.errors import NotEvaluated

if TYPE_CHECKING:
    from opsbook.targets import HostTarget

# What coreutils' `timeout` exits with when it had to stop the command.
TIMED_OUT = 124


class NotObserved(NotEvaluated):
    """A fact of a host could not be read: `host web1: /var: no answer within 3s`."""

    def __init__(self, host: HostTarget, subject: str, reason: str) -> None:
        self.subject, self.reason = subject, reason
        super().__init__(f"{host.label}: {subject}: {reason}")


class Answer(Struct, frozen=True):
    """What a command on the host answered."""

    rc: int
    stdout_bytes: bytes
    stderr: str

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", errors="replace")

    def why(self) -> str:
        """The tool's own reason ("No such file or directory"), else the exit status."""
        last = self.stderr.strip().splitlines()[-1:] or [""]
        return last[0].rsplit(": ", 1)[-1].strip() or f"exit status {self.rc}"


def run(host: HostTarget, subject: str, command: str, *args: str, timeout_s: float) -> Answer:
    """Run `command` under `timeout` on the host; `%s` in it stands for the next of `args`
    (quoted by testinfra), so a literal `%` is written `%%`.

    Raises NotObserved when the host gives no answer within `timeout_s`; any other exit status
    is the caller's to read.
    """
    done = host.testinfra.run("timeout %s " + command, f"{timeout_s:g}", *args)
    if done.rc == TIMED_OUT:
        raise NotObserved(host, subject, f"no answer within {timeout_s:g}s")
    return Answer(done.rc, done.stdout_bytes, done.stderr)


class Memory(Struct, frozen=True):
    """The host's memory, as /proc/meminfo gives it."""

    total_bytes: int
    # MemAvailable (not MemFree) is the kernel's estimate of what can be had without swapping:
    # page cache counts as available, so a busy file server is not reported as full.
    available_bytes: int

    @property
    def used_percent(self) -> float:
        return 100.0 * (1 - self.available_bytes / self.total_bytes)


_MEMINFO_LINE = re.compile(r"^(\w+):\s+(\d+) kB$", re.M)


def memory(host: HostTarget, *, timeout_s: float) -> Memory:
    """Total and available memory of the host (/proc/meminfo; Linux 3.14 or later)."""
    answer = run(host, "/proc/meminfo", "cat /proc/meminfo", timeout_s=timeout_s)
    if answer.rc != 0:
        raise NotObserved(host, "/proc/meminfo", f"cannot read: {answer.why()}")
    kib = {key: int(value) for key, value in _MEMINFO_LINE.findall(answer.stdout)}
    if not kib.get("MemTotal"):
        raise NotObserved(host, "/proc/meminfo", "no MemTotal")
    if "MemAvailable" not in kib:
        raise NotObserved(host, "/proc/meminfo", "no MemAvailable (kernel < 3.14)")
    return Memory(total_bytes=kib["MemTotal"] * 1024, available_bytes=kib["MemAvailable"] * 1024)
