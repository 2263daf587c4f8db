"""SIGTERM ends a run the way Ctrl-C does: what ran is reported, and the exit code is 2.

cron's `timeout`, systemd stopping a timer's service and a CI job's cancel all send SIGTERM.
By default it kills Python on the spot: no summary, no report folder (only a hidden staging
folder left behind). From configure until the reports are being written, SIGTERM stops the
run like an interrupt instead; a second SIGTERM, or one while the reports are written, has its
default effect. Only when pytest is the program: a program that calls pytest.main() keeps its
own signal handling.
"""

from __future__ import annotations

import signal
from types import FrameType

import pytest

from opsbook.plugin.garbage import started_by_the_pytest_command

_INSTALLED = pytest.StashKey[bool]()


def _terminate(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second one kills
    pytest.exit("terminated (SIGTERM)", returncode=pytest.ExitCode.INTERRUPTED)


def pytest_configure(config: pytest.Config) -> None:
    installed = started_by_the_pytest_command()
    if installed:
        signal.signal(signal.SIGTERM, _terminate)
    config.stash[_INSTALLED] = installed


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    if session.config.stash.get(_INSTALLED, False):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
