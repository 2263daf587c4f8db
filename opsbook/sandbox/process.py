"""Native processes of the sandbox: spawn, pid files, stop, and the tail of their logs.

A pid file holds the pid and the process start time (from /proc), so that a pid reused by an
unrelated process is never taken for ours. Each process leads its own session and process group
(start_new_session), so stopping it can also reach the children it forked.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from opsbook.waiting import until

DEADLINE_S = 30.0
STOP_GRACE_S = 15.0
POLL_S = 0.05

# Children spawned by this interpreter, kept so that they are reaped (no zombies) and so that
# subprocess never warns about a Popen collected while its process still runs.
_children: dict[int, subprocess.Popen[bytes]] = {}
_exit_codes: dict[int, int] = {}


class _Service(subprocess.Popen[bytes]):
    """A child that is meant to outlive this interpreter (a sandbox service).

    Popen warns when an object for a running process is collected, which is right for a
    forgotten child but wrong for a daemon started on purpose; the service is reaped by
    `_children` while we run and by init once we have exited.
    """

    def __del__(self) -> None:
        pass


class SandboxError(Exception):
    """A sandbox operation failed; the message is one line."""


class ComponentError(SandboxError):
    """A component failed to start or stop; carries the tail of its log."""

    def __init__(self, component: str, problem: str, log: Path | None) -> None:
        self.component = component
        self.problem = problem
        self.log = log
        self.log_tail = tail(log) if log is not None else []
        where = f" (log {log})" if log is not None else ""
        super().__init__(f"{component}: {problem}{where}")


def tail(path: Path, lines: int = 10) -> list[str]:
    """The last lines of a log file, or nothing when it cannot be read."""
    try:
        with path.open("rb") as stream:
            stream.seek(0, os.SEEK_END)
            size = stream.tell()
            stream.seek(max(0, size - 16384))
            text = stream.read().decode("utf-8", "replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state is [0], pgrp [2], start [19])."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    return raw.rpartition(")")[2].split()


def _start_time(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[19] if fields else None


def _alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        _exit_codes[pid] = child.returncode
        del _children[pid]
        return False
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


@dataclass
class Process:
    """One native process, identified by its pid file."""

    name: str
    argv: Sequence[str]
    log: Path
    pid_file: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    user: str | None = None  # run as this OS user (only when we are root)
    stop_signal: signal.Signals = signal.SIGTERM
    _spawned: int | None = None

    def _recorded(self) -> tuple[int, str] | None:
        try:
            pid_text, _, started = self.pid_file.read_text(encoding="ascii").partition(" ")
            return int(pid_text), started.strip()
        except (OSError, ValueError):
            return None

    def pid(self) -> int | None:
        """The pid of the running process, or None."""
        recorded = self._recorded()
        if recorded is None:
            return None
        pid, started = recorded
        return pid if _alive(pid) and _start_time(pid) == started else None

    def _kill_orphans(self) -> None:
        """SIGKILL what is left of a process whose leader died (e.g. nginx workers after a
        kill -9 of the master), then forget the pid file.

        Safe against pid reuse: Linux hands out no pid still in use as a process group id, so
        while the group has members its id cannot belong to anyone else.
        """
        recorded = self._recorded()
        if recorded is None or self.pid() is not None:
            return
        pid, _ = recorded
        if not _alive(pid) and group_members(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            if not until(lambda: not group_members(pid), 5.0, POLL_S):
                raise ComponentError(self.name, f"process group {pid} survived SIGKILL", self.log)
        self.pid_file.unlink(missing_ok=True)

    def is_running(self) -> bool:
        return self.pid() is not None

    def exit_code(self) -> int | None:
        """The exit code of the last process spawned by this interpreter, once it ended."""
        return _exit_codes.get(self._spawned) if self._spawned is not None else None

    def spawn(self) -> int:
        """Start the process (unless it already runs) and return its pid."""
        running = self.pid()
        if running is not None:
            return running
        self._kill_orphans()
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        drop: dict[str, object] = {}
        if self.user is not None and os.geteuid() == 0:
            entry = pwd.getpwnam(self.user)
            drop = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        with self.log.open("ab") as log, open(os.devnull, "rb") as devnull:
            child = _Service(  # type: ignore[call-overload]
                list(self.argv),
                stdin=devnull,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=dict(self.env) if self.env is not None else None,
                start_new_session=True,
                **drop,
            )
        assert isinstance(child, subprocess.Popen)
        _children[child.pid] = child
        self._spawned = child.pid
        started = _start_time(child.pid) or ""
        self.pid_file.write_text(f"{child.pid} {started}\n", encoding="ascii")
        return child.pid

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop the process: its stop signal, then SIGKILL to its whole group after the grace."""
        pid = self.pid()
        if pid is None:
            self._kill_orphans()
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, self.stop_signal)

        def gone() -> bool:
            return not _alive(pid) and not group_members(pid)

        if not until(gone, grace_s, POLL_S):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            if not until(gone, 5.0, POLL_S):
                raise ComponentError(self.name, f"pid {pid} survived SIGKILL", self.log)
        self.pid_file.unlink(missing_ok=True)
