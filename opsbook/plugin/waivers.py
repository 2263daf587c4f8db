"""--waivers: known failures, accepted until a date, reported as waived (pytest's xfail)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from opsbook.plugin.inventory_option import chosen_inventory_path
from opsbook.plugin.keys import CHECK, INVENTORY, Prop

if TYPE_CHECKING:
    from opsbook.waivers import Waivers

WAIVERS: pytest.StashKey[Waivers | None] = pytest.StashKey()
FILE_NAME = "waivers.yaml"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("opsbook").addoption(
        "--waivers",
        metavar="PATH",
        help=f"waivers file (default: {FILE_NAME} beside the inventory, if there is one)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[WAIVERS] = None
    given = config.getoption("waivers")
    inventory = chosen_inventory_path(config)
    if given:
        path = Path(given)
    elif inventory is not None and config.stash.get(INVENTORY, None) is not None:
        path = inventory.parent / FILE_NAME
        if not path.exists():
            return
    else:
        return
    from opsbook.inventory import InventoryError
    from opsbook.waivers import load_waivers

    try:
        config.stash[WAIVERS] = load_waivers(path)
    except InventoryError as exc:
        raise pytest.UsageError(str(exc)) from None


def settle_waiver(
    item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport
) -> None:
    """Turn a failed check's report into a waived one (pytest's xfail) when a waiver covers
    it, or note the expired waiver. Called by the one report wrapper (opsbook.plugin.outcomes)
    after unreachable targets are settled and before remediation: a waived failure is not
    remediated."""
    waivers = item.config.stash.get(WAIVERS, None)
    info = item.stash.get(CHECK, None)
    if waivers is None or info is None or call.when != "call" or not report.failed:
        return
    waiver = waivers.find(info.spec.check_id, info.target)
    if waiver is None:
        return
    if waiver.expired(dt.date.today()):
        report.longrepr = f"{report.longrepr}\nwaiver expired on {waiver.expires}: {waiver.line()}"
        report.user_properties.append((Prop.WAIVER, f"expired: {waiver.line()}"))
        return
    # pytest's own vocabulary for an accepted failure: xfailed, with the reason shown.
    report.outcome = "skipped"
    report.wasxfail = f"waived: {waiver.line()}"
    report.user_properties.append((Prop.WAIVER, waiver.line()))
    report.user_properties.append((Prop.WAIVED_MESSAGE, str(report.longrepr).split("\n", 1)[0]))
