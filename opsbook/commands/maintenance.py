"""`python -m opsbook maintenance on|off`: the maintenance page, switched by a person.

Prints the plan, then carries it out under the remediation lock, and records it in the
deployment's audit log (in its state directory), like any applied remediation. `on` makes the
frontend answer 503 with the maintenance page everywhere, /health included; `off` serves the
site again. Asking for the state it is already in changes nothing and says so.

The inventory is --inventory, else $OPSBOOK_INVENTORY, else the sandbox's
($OPSBOOK_SANDBOX_DIR or .opsbook/sandbox)/inventory.yaml.

Exit codes: 0 done, or nothing to do; 1 the switch failed (what was attempted is printed);
2 bad usage (no inventory, no frontend, a runtime without a maintenance switch);
3 another run holds the remediation lock; 11 switched, but the audit log could not take its
entry (the output says why).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from opsbook.locations import inventory_path, reports_dir
from opsbook.remediate.audit import EXIT_NOT_AUDITED

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3


def register(commands: Any) -> None:
    parser = commands.add_parser("maintenance", help="turn the frontend's maintenance page on/off")
    parser.set_defaults(run=run)
    parser.add_argument("action", choices=["on", "off"])
    parser.add_argument("--inventory", type=Path, help="default: $OPSBOOK_INVENTORY or sandbox")
    parser.add_argument("--reports-dir", type=Path, default=reports_dir())


def run(args: argparse.Namespace) -> int:
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
    attempt = remediator.apply_one(fix, ctx, apply=True, redact=redact)
    if attempt.status == "skipped":
        print(f"maintenance: refused: {attempt.reason}", file=sys.stderr)
        return EXIT_REFUSED
    print(redact(f"maintenance {args.action}: {attempt.summary()}"))
    for line in attempt.plan.lines() if attempt.plan else []:
        print(redact(f"  {line}"))
    if attempt.status == "refused":
        return EXIT_REFUSED
    if attempt.status not in ("applied", "nothing-to-do"):
        return EXIT_FAILED
    if attempt.not_audited:
        print(
            f"maintenance: {args.action} {attempt.status}, {attempt.not_audited}", file=sys.stderr
        )
        return EXIT_NOT_AUDITED
    return 0
