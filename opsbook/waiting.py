"""Waiting for something to become true, within a deadline: the one polling loop of the fixes,
the canary and the sandbox (each says how often it looks)."""

from __future__ import annotations

import time
from collections.abc import Callable


def until(condition: Callable[[], bool], deadline_s: float, poll_s: float) -> bool:
    """Ask `condition` every `poll_s` until it holds (True) or `deadline_s` has passed (False,
    after one last look)."""
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() >= end:
            return False
        time.sleep(poll_s)
    return True
