"""SIGTERM stops a run after the check that is running: what ran is reported, exit code 2.

cron's `timeout`, systemd stopping a timer's service and a CI job's cancel all send SIGTERM.
By default it kills Python on the spot: no summary, no report folder (only a hidden staging
folder left behind). Instead, the check that is running finishes (its cleanup included: a
scratch cluster of the restore drill is stopped and deleted, which an exception raised in the
middle of that cleanup would skip), no further check starts, and the run ends as interrupted.
A second SIGTERM has its default effect. Only when pytest is the program: a program that calls
pytest.main() keeps its own signal handling.
"""

from __future__ import annotations

import signal
from types import FrameType

import pytest

from opsbook.plugin import started_by_the_pytest_command

REASON = "terminated (SIGTERM): stopped after the check that was running"

_INSTALLED = pytest.StashKey[bool]()


def pytest_sessionstart(session: pytest.Session) -> None:
    def stop(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second one kills
        session.shouldstop = REASON  # pytest stops between two checks

    installed = started_by_the_pytest_command()
    if installed:
        signal.signal(signal.SIGTERM, stop)
    session.config.stash[_INSTALLED] = installed


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    if session.config.stash.get(_INSTALLED, False):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
