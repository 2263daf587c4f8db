"""The opsbook suite: the plugin (machinery) and the fixtures that turn inventory into targets."""

pytest_plugins = ["opsbook.plugin", "fixtures.targets"]
