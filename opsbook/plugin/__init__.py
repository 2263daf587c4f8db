"""The opsbook pytest plugin, one module per concern (like pytest's own `_pytest`)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from importlib import import_module
from types import FrameType

import pytest

MODULES = (
    "opsbook.plugin.garbage",
    "opsbook.plugin.termination",
    "opsbook.plugin.inventory_option",
    "opsbook.plugin.collection",
    "opsbook.plugin.findings",
    "opsbook.plugin.outcomes",
    "opsbook.plugin.remediate",
    "opsbook.plugin.dependencies",
    "opsbook.plugin.waivers",
    "opsbook.plugin.reports",
    "opsbook.plugin.html",
    "opsbook.plugin.junit",
    "opsbook.plugin.metrics",
    "opsbook.plugin.fleet",
)


def register(pluginmanager: pytest.PytestPluginManager, names: Iterable[str]) -> None:
    """Register plugin modules, each once, whoever registered it first.

    Not through `pytest_plugins`: for every name listed there pytest reads the entry points
    of every installed distribution (about 4 ms a name in a full venv), and start-up is most
    of a daily run's time.
    """
    for name in names:
        module = import_module(name)
        if not pluginmanager.is_registered(module):
            pluginmanager.register(module, name)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    register(pluginmanager, MODULES)


# What a checks run loads: named here, not only found through entry points, so that a run with
# plugin autoloading turned off (PYTEST_DISABLE_PLUGIN_AUTOLOAD) still has them; each is
# registered once, whoever loaded it first. pytest-html's fixtures module comes before its
# plugin, which imports it.
SUITE = (
    "opsbook.plugin.garbage",
    "pytest_metadata.plugin",
    "pytest_html.fixtures",
    "pytest_html.plugin",
    "opsbook.plugin",
    "opsbook.fixtures.targets",
    "opsbook.fixtures.containers",
)


def register_suite(pluginmanager: pytest.PytestPluginManager) -> None:
    """Load everything a checks run needs (the conftest.py files of the checks call this)."""
    register(pluginmanager, SUITE)


def started_by_the_pytest_command() -> bool:
    """Whether this run was started by pytest's console entry point (not by pytest.main()
    called from another program), so that only the interpreter's exit comes after it."""
    frame: FrameType | None = sys._getframe()
    while frame is not None:
        if frame.f_globals.get("__name__") == "_pytest.config":
            if frame.f_code.co_name == "main":
                return False
            if frame.f_code.co_name in ("console_main", "_console_main"):
                return True
        frame = frame.f_back
    return False
