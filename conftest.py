"""The opsbook suite: the plugin (machinery) and the fixtures that turn inventory into targets.

The project's own tests live in tests/ with their own pytest.ini, so this file is not loaded
for them.
"""

from __future__ import annotations

import pytest

from opsbook.plugin import register

# The plugins a checks run needs, registered here too so that a run with plugin autoloading
# turned off (PYTEST_DISABLE_PLUGIN_AUTOLOAD) still has them; each is registered once,
# whoever loaded it first. pytest-html's fixtures module comes before its plugin, which
# imports it.
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
