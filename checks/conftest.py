"""opsbook's plugins for the packaged checks, in the checkout and when installed.

Installed, the checks are `opsbook.checks` and `opsbook check` runs them; this file is what
loads the plugins there, where there is no checkout's root conftest.
"""

from __future__ import annotations

import pytest

from opsbook.plugin import register_suite


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    register_suite(pluginmanager)
