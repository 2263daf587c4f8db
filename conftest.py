"""The checkout's root conftest: opsbook's plugins for any checks run from here.

checks/conftest.py does the same for the packaged checks (it is installed with them); this one
also serves check modules of your own kept elsewhere in the checkout. The project's own tests
live in tests/ with their own pytest.ini, so this file is not loaded for them.
"""

from __future__ import annotations

import pytest

from opsbook.plugin import register_suite


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    register_suite(pluginmanager)
