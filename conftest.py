"""The opsbook suite: the plugin (machinery) and the fixtures that turn inventory into targets.

The project's own tests live in tests/ with their own pytest.ini, so this file is not loaded
for them.
"""

pytest_plugins = ["opsbook.plugin", "fixtures.targets", "fixtures.containers"]
