"""Where opsbook looks for things by default (light: the command line imports it)."""

from __future__ import annotations

import os
from pathlib import Path


def sandbox_inventory(rootpath: Path) -> Path:
    """The sandbox's inventory: $OPSBOOK_SANDBOX_DIR, else .opsbook/sandbox under rootpath."""
    state = os.environ.get("OPSBOOK_SANDBOX_DIR")
    base = Path(state) if state else rootpath / ".opsbook" / "sandbox"
    return base / "inventory.yaml"


def inventory_path(given: Path | None) -> Path:
    """A command's inventory, found as pytest finds it: --inventory, else $OPSBOOK_INVENTORY,
    else the sandbox's."""
    if given is not None:
        return given
    if os.environ.get("OPSBOOK_INVENTORY"):
        return Path(os.environ["OPSBOOK_INVENTORY"]).expanduser()
    return sandbox_inventory(Path.cwd())
