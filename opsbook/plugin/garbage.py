"""Cyclic garbage collection set for a short run, as mypy does for its own.

A checks run imports pytest, its plugins, the checks and the database drivers, and keeps most
of what it creates until it exits. At CPython's default threshold (a collection every 700 new
container objects) the collector walks those long-lived objects again and again: 5-7% of a
daily run. So, once this plugin is registered, what exists is frozen (never walked again) and
the young generation is collected every 100,000 allocations: a daily run collects nothing
after start-up and its peak memory does not change, while a long run (a fix waiting for a
service) still frees its cycles. pytest_unconfigure puts the defaults back, for callers that
run pytest in-process.
"""

from __future__ import annotations

import gc

import pytest

THRESHOLD = 100_000

_defaults: tuple[int, int, int] | None = None


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    # The earliest hook a plugin gets: called as soon as conftest.py registers this module.
    global _defaults
    if _defaults is None:
        _defaults = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(THRESHOLD, *_defaults[1:])


def pytest_unconfigure(config: pytest.Config) -> None:
    global _defaults
    if _defaults is not None:
        # Back to the defaults without a walk of all the run made: at threshold 700 the next
        # allocation would collect the young generation, now the run's whole work.
        gc.freeze()
        gc.set_threshold(*_defaults)
        gc.unfreeze()
        _defaults = None
