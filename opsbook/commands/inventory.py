"""`opsbook inventory check PATH...`: lint inventories without their secrets (a CI job's step).

PATH is an inventory file or a fleet's folder of them (the inventories in it, by the rule of
docs/fleet.md: a waivers file or a secret beside them is not one); several may be given. Two
inventories with one deployment name are a problem too, as a fleet run would refuse them.

Everything is validated as a run validates it at start (the schema, every value, the services
graph, the thresholds, `OPSBOOK__` overrides from the environment), except that no secret is
read: a `{file: PATH}` or `{env: NAME}` reference is checked for its form only, so the files may
be absent or unreadable and the variables unset, as on a CI runner.

Exit codes: 0 all valid (one line each: the deployment and what it holds); 2 any invalid or
unreadable, one
line on stderr per problem found (each section, and each entry of a named section, is judged on
its own, so that one run shows the problems of several; the services graph is judged once the
entries it names are sound).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EXIT_INVALID = 2
# Stands in for a missing or invalid `name` while the other sections are judged on their own.
PLACEHOLDER_NAME = "inventory-check"


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "inventory",
        help="check an inventory file without its secrets (for CI)",
        description=__doc__.split("\n")[0],
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    lint = actions.add_parser(
        "check",
        help="validate an inventory as a run would, reading none of its secrets",
        description=__doc__.split("\n")[0],
    )
    lint.add_argument("paths", type=Path, nargs="+", metavar="PATH")
    lint.set_defaults(run=run)


def pieces(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """The inventory cut into parts judged alone: `name`, each entry of a named section (but
    services and credentials, which name the others' entries), each other section."""
    from opsbook.inventory import NAMED_SECTIONS

    name = raw.get("name")
    base = {"name": name if isinstance(name, str) else PLACEHOLDER_NAME}
    parts: list[dict[str, Any]] = [{"name": name}] if "name" in raw else [{}]
    for key, value in raw.items():
        if key in ("name", "services", "credentials"):
            continue
        if key in NAMED_SECTIONS and isinstance(value, dict):
            parts.extend({**base, key: {entry: v}} for entry, v in value.items())
        else:
            parts.append({**base, key: value})
    return parts


def problems(path: Path) -> tuple[list[str], Any]:
    """Every problem found in the inventory at `path` (none: also the loaded inventory)."""
    from opsbook.inventory import Inventory, InventoryError, convert, read_inventory

    try:
        raw = read_inventory(path)
    except InventoryError as exc:
        return [str(exc)], None
    what = f"inventory {path}"
    found: dict[str, None] = {}
    for part in pieces(raw):
        try:
            convert(part, Inventory, what, resolve_secrets=False)
        except InventoryError as exc:
            found[str(exc)] = None
    # The whole, as a run loads it: what no part shows alone (the services graph).
    try:
        inventory = convert(raw, Inventory, what, resolve_secrets=False)
    except InventoryError as exc:
        found[str(exc)] = None
        inventory = None
    return list(found), inventory


def summary(path: Path, inventory: Any) -> str:
    sections = {"http": inventory.http, "postgres": inventory.postgres, "redis": inventory.redis}
    targets = sum(len(entries) for entries in sections.values())
    kinds = ", ".join(f"{name} {len(entries)}" for name, entries in sections.items() if entries)
    return (
        f"inventory {path}: valid: deployment {inventory.name}, {targets} targets"
        f"{f' ({kinds})' if kinds else ''}, {len(inventory.hosts)} hosts, "
        f"{len(inventory.services)} services (secrets not read)"
    )


def run(args: argparse.Namespace) -> int:
    from opsbook import fleet

    try:
        paths = fleet.inventory_files(args.paths)
        fleet.deployments(paths, None)  # one deployment name per inventory, as a fleet needs
    except fleet.FleetError as exc:
        print(f"opsbook inventory check: {exc}", file=sys.stderr)
        return EXIT_INVALID
    code = 0
    for path in paths:
        found, inventory = problems(path)
        for line in found:
            print(line, file=sys.stderr)
        if found:
            code = EXIT_INVALID
        else:
            print(summary(path, inventory))
    return code
