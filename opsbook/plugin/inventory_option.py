"""--inventory: find, load and validate the inventory once, at start; register the markers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from opsbook.check import AREAS, CADENCES
from opsbook.locations import sandbox_inventory
from opsbook.plugin.keys import INVENTORY, REDACTOR
from opsbook.secrets import Redactor

# Whether the inventory's secrets are read at start: a plugin that only lists the checks
# (`opsbook list`) sets it False before pytest_configure; nothing connects in such a run.
READ_SECRETS = pytest.StashKey[bool]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("opsbook")
    group.addoption(
        "--inventory",
        metavar="PATH",
        action="append",
        help="inventory YAML of the deployment to check (default: $OPSBOOK_INVENTORY, "
        "else the sandbox's inventory); give it several times, or a folder of inventories, "
        "to check a fleet (docs/fleet.md)",
    )


def chosen_inventory_path(config: pytest.Config) -> Path | None:
    return _chosen_path(config)[0]


def _chosen_path(config: pytest.Config) -> tuple[Path | None, bool]:
    """The inventory to load, and whether a person asked for it explicitly."""
    options = config.getoption("inventory") or []
    if any(not option.strip() for option in options):
        # `--inventory=` (an unset shell variable, say) must not fall back to another one.
        raise pytest.UsageError("--inventory: empty path")
    given = options[-1] if options else os.environ.get("OPSBOOK_INVENTORY")
    if given:
        path = Path(given).expanduser()
        if path.is_dir():
            # A folder of one inventory (several make a fleet run: opsbook.plugin.fleet).
            from opsbook.fleet import FleetError, inventory_files

            try:
                path = inventory_files([path])[0]
            except FleetError as exc:
                raise pytest.UsageError(str(exc)) from None
        return path, True
    default = sandbox_inventory(config.rootpath)
    return (default if default.exists() else None), False


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    for name, text in {**CADENCES, **AREAS}.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    config.stash[INVENTORY] = None
    config.stash[REDACTOR] = Redactor()
    if config.option.help or config.option.version:
        return
    if getattr(config.option, "hosts", None):
        # testinfra's own option would add hosts the inventory does not know: no thresholds,
        # no filesystems, no name in the reports.
        raise pytest.UsageError(
            "--hosts: opsbook's hosts come from the inventory; add them under `hosts:` there"
        )
    path, explicit = _chosen_path(config)
    if path is None:
        return
    if explicit and not path.is_file():
        raise pytest.UsageError(f"inventory {path}: no such file")
    from opsbook.inventory import InventoryError, load_inventory

    try:
        inventory = load_inventory(path, resolve_secrets=config.stash.get(READ_SECRETS, True))
    except InventoryError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[INVENTORY] = inventory
    config.stash[REDACTOR] = Redactor(secret.reveal() for secret in inventory.secrets())
