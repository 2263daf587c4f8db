"""The opsbook pytest plugin, one module per concern (like pytest's own `_pytest`)."""

pytest_plugins = [
    "opsbook.plugin.inventory_option",
    "opsbook.plugin.collection",
    "opsbook.plugin.findings",
    "opsbook.plugin.outcomes",
    "opsbook.plugin.remediate",
    "opsbook.plugin.waivers",
    "opsbook.plugin.reports",
    "opsbook.plugin.metrics",
]
