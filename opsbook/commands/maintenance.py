"""`python -m opsbook maintenance on|off`: the maintenance page, switched by a person;
`maintenance run patch|upgrade|cleanup`: a maintenance window around one action.

Prints the plan, then carries it out under the remediation lock, and records it in the
deployment's audit log (in its state directory), like any applied remediation. `on` makes the
frontend answer 503 with the maintenance page everywhere, /health included; `off` serves the
site again. Asking for the state it is already in changes nothing and says so.

The inventory is --inventory, else $OPSBOOK_INVENTORY, else the sandbox's
($OPSBOOK_SANDBOX_DIR or .opsbook/sandbox)/inventory.yaml.

Exit codes of on|off: 0 done, or nothing to do; 1 the switch failed (what was attempted is
printed); 2 bad usage (no inventory, no frontend, a runtime without a maintenance switch);
3 another run holds the remediation lock; 11 switched, but the audit log could not take its
entry (the output says why).

    maintenance run ACTION [--tag TAG] [--offline] [--force] [--apply [--allow=prune-volumes]]

pre-checks (-m daily), a backup, the page on, the action, the page off (always), post-checks,
a verdict; every step audited (opsbook.maintenance_window). Without --apply: the plan only
(for cleanup, exactly what it would remove now). Exit codes of run: 0 done and the
post-checks green (or only planned, or not applicable); 1 done, the post-checks red; 2 bad
usage; 3 refused (the lock is held, or the pre-checks are red: nothing changed); 4 the action
failed (the page is off again; an upgrade or patch rolled back as a deploy does); 5 the page
could not be switched off; 11 done, but the audit log could not take every entry.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from opsbook.locations import inventory_path, reports_dir

EXIT_USAGE = 2


def register(commands: Any) -> None:
    parser = commands.add_parser("maintenance", help="turn the frontend's maintenance page on/off")
    parser.set_defaults(run=run)
    parser.add_argument("action", choices=["on", "off", "run"])
    parser.add_argument(
        "window", nargs="?", choices=["patch", "upgrade", "cleanup"], help="run: the action"
    )
    parser.add_argument("--inventory", type=Path, help="default: $OPSBOOK_INVENTORY or sandbox")
    parser.add_argument("--reports-dir", type=Path, default=reports_dir())
    parser.add_argument("--tag", help="run upgrade: the release to deploy")
    parser.add_argument("--apply", action="store_true", help="run: carry the window out")
    parser.add_argument(
        "--allow", action="append", default=[], metavar="WHAT",
        help="run cleanup: prune-volumes (the project's unused volumes: data)",
    )  # fmt: skip
    parser.add_argument(
        "--force", action="store_true", help="run: go on when the pre-checks are red"
    )
    parser.add_argument(
        "--offline", action="store_true",
        help="run patch: no registry reachable: rebuild without cache, without --pull",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    if args.action == "run":
        return _window(args)
    if args.window is not None:
        print(f"maintenance: {args.action} takes no action ({args.window})", file=sys.stderr)
        return EXIT_USAGE
    from opsbook.inventory import InventoryError, load_inventory
    from opsbook.remediate.context import Context
    from opsbook.remediate.runner import Remediator
    from opsbook.remediation.maintenance import (
        MaintenanceUnsupported,
        maintenance_off,
        maintenance_on,
    )
    from opsbook.secrets import Redactor

    try:
        inventory = load_inventory(inventory_path(args.inventory))
    except InventoryError as exc:
        print(f"maintenance: {exc}", file=sys.stderr)
        return EXIT_USAGE
    frontends = sorted(inventory.endpoints("frontend"))
    if not frontends:
        print("maintenance: the inventory has no frontend (http kind: frontend)", file=sys.stderr)
        return EXIT_USAGE
    fix = maintenance_on if args.action == "on" else maintenance_off
    ctx = Context(inventory, "maintenance", "http", frontends[0], fix=fix)
    redact = Redactor(secret.reveal() for secret in inventory.secrets())
    try:
        # The plan is shown before the lock is asked for; a runtime without the switch is a
        # usage error, not a failed fix.
        plan = fix(ctx, apply=False)
    except MaintenanceUnsupported as exc:
        print(f"maintenance: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"maintenance {args.action}: plan")
    for line in plan.lines():
        print(redact(f"  {line}"))
    if plan.nothing_to_do is not None:
        return 0
    remediator = Remediator(inventory, args.reports_dir, f"cli-{os.getpid()}")
    from opsbook.commands.applied import said

    attempt = remediator.apply_one(fix, ctx, apply=True, redact=redact)
    return said(f"maintenance {args.action}", attempt, redact)


def _window(args: argparse.Namespace) -> int:
    from opsbook import maintenance_window as mw
    from opsbook.compose import ComposeError
    from opsbook.deploy import DeployError
    from opsbook.inventory import InventoryError, load_inventory
    from opsbook.secrets import Redactor

    if args.window is None:
        print("maintenance: run needs an action: patch, upgrade or cleanup", file=sys.stderr)
        return EXIT_USAGE
    path = inventory_path(args.inventory)
    try:
        inventory = load_inventory(path)
    except InventoryError as exc:
        print(f"maintenance: {exc}", file=sys.stderr)
        return EXIT_USAGE
    redact = Redactor(secret.reveal() for secret in inventory.secrets())
    allow = frozenset(a.strip() for each in args.allow for a in each.split(",") if a.strip())
    try:
        window = mw.Window(
            inventory, path.absolute(), args.window, args.reports_dir.absolute(),
            f"maintenance-{os.getpid()}", redact,
            say=lambda line: print(redact(line), flush=True),
            allow=allow, tag=args.tag, force=args.force, offline=args.offline,
        )  # fmt: skip
        if not args.apply:
            na = window.not_applicable()
            if na:
                print(na)
                return 0
            lines = window.plan()
            print(f"maintenance run {args.window}: plan (--apply to carry it out)")
            for line in lines:
                print(f"  {line}")
            return 0
        result = window.run()
    except mw.Usage as exc:
        print(f"maintenance: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (DeployError, ComposeError) as exc:
        # Only while planning (the engine asked what a cleanup would remove): nothing changed.
        print(redact(f"maintenance: {exc}; nothing was changed"), file=sys.stderr)
        return EXIT_USAGE
    if result.evidence is not None:
        print(f"evidence: {result.evidence}")
    stream = sys.stdout if result.code == mw.EXIT_DONE else sys.stderr
    print(redact(f"maintenance {args.window}: {result.line}"), file=stream)
    return result.code
