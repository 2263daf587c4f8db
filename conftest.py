"""The opsbook suite: the plugin (machinery) and the fixtures that turn inventory into targets.

The project's own tests live in tests/ with their own pytest.ini, so this file is not loaded
for them.
"""

from __future__ import annotations

import pytest

from opsbook.plugin import register

# Plugin autoloading is off (pyproject.toml): these are all the plugins a checks run loads.
# The garbage collector's settings come first, to cover the other plugins' imports;
# pytest-html's fixtures module comes before its plugin, which imports it.
PLUGINS = (
    "opsbook.plugin.garbage",
    "pytest_metadata.plugin",
    "pytest_html.fixtures",
    "pytest_html.plugin",
    "opsbook.plugin",
    "fixtures.targets",
    "fixtures.containers",
)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    register(pluginmanager, PLUGINS)
