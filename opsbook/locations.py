"""Where opsbook keeps its runs, reports and sandboxes (light: the command line imports it).

One home, found the same way by `pytest` in a checkout, by `opsbook check` and by every other
command, from whatever folder they are started:

1. $OPSBOOK_HOME, when set;
2. else the opsbook checkout the working folder is in (as `pytest` there would find its
   rootdir);
3. else the checkout this opsbook runs from (an editable install), so that `opsbook status`
   from another folder finds the runs made in the checkout;
4. else $XDG_STATE_HOME/opsbook (~/.local/state/opsbook): an installed opsbook.

Reports go to <home>/reports, the sandboxes' state to <home>/.opsbook/.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
# The packaged checks: the checkout's checks/ (opsbook/checks links to it), or opsbook/checks
# in an installed wheel.
CHECKS = (PACKAGE / "checks").resolve()


def is_checkout(folder: Path) -> bool:
    """Whether `folder` is the top of an opsbook checkout (pytest's rootdir for the checks)."""
    return all(
        (folder / name).exists() for name in ("pyproject.toml", "checks", "opsbook/__init__.py")
    )


def home() -> Path:
    """Where runs, reports and sandbox state live (the module's docstring gives the order)."""
    if os.environ.get("OPSBOOK_HOME"):
        return Path(os.environ["OPSBOOK_HOME"]).expanduser()
    cwd = Path.cwd()
    for folder in (cwd, *cwd.parents):
        if is_checkout(folder):
            return folder
    if is_checkout(PACKAGE.parent):
        return PACKAGE.parent
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "opsbook"


def reports_dir() -> Path:
    """Where each run's report folder goes by default: <home>/reports."""
    return home() / "reports"


def state_dir(name: str) -> Path:
    """A sandbox's state folder by default: <home>/.opsbook/NAME (sandbox, compose)."""
    return home() / ".opsbook" / name


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
    return sandbox_inventory(home())
