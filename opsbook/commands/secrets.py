"""`python -m opsbook secrets rotate`: the incident runbook's secret rotation.

    python -m opsbook secrets rotate [--inventory PATH] [--only postgres|redis|api_key|NAME]
                                     [--apply --allow=rotate] [--reports-dir DIR]

Rotates the application's credentials the inventory names (`credentials:`): a new random
secret in each one's file (the old kept as FILE.previous), set on its server by the admin
role, the services that read it restarted through their runtimes, then verified: the old
secret refused, the new accepted, every service answering and the canary through.
(opsbook.remediation.credentials; docs/remediation.md#secret-rotation.)

Without --apply it prints the plan and changes nothing. With --apply it carries it out under
the remediation lock, written ahead to the deployment's audit log (intent and outcome); every
step is of the risky kind `rotate`, so it needs `--allow=rotate` (or `remediation.allow`).
No secret value is printed, logged or audited: the output names credentials, files and the
files' SHA-256.

Exit codes (those of `opsbook maintenance`): 0 rotated and verified, or only planned; 1 a step
failed or the verification did not hold (what was done is printed); 2 bad usage (no inventory,
no such credential, opsbook's own credential, a consumer no runtime can restart, an unknown
--allow kind); 3 refused (not allowed, or another run holds the remediation lock); 11 rotated,
but the audit log could not take its entry.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

EXIT_USAGE = 2


def register(commands: Any) -> None:
    parser = commands.add_parser("secrets", help="rotate the application's credentials")
    parser.set_defaults(run=run)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    rotate = actions.add_parser(
        "rotate", help="new secrets in their files, on their servers, consumers restarted"
    )
    rotate.add_argument("--inventory", type=Path, default=None, help="inventory YAML")
    rotate.add_argument(
        "--only", default=None, metavar="KIND|NAME",
        help="postgres, redis, api_key, or a credential's name (default: every credential)",
    )  # fmt: skip
    rotate.add_argument("--apply", action="store_true", help="carry the plan out")
    rotate.add_argument(
        "--allow", action="append", default=[], metavar="KIND",
        help="allow a risky kind of step: rotate is needed",
    )  # fmt: skip
    rotate.add_argument("--reports-dir", type=Path, default=None, help="default: reports/")


def run(args: argparse.Namespace) -> int:
    from opsbook.commands.applied import said
    from opsbook.inventory import InventoryError, load_inventory
    from opsbook.locations import inventory_path, reports_dir
    from opsbook.remediate.context import Context
    from opsbook.remediate.plan import parse_allow
    from opsbook.remediate.runner import Remediator
    from opsbook.remediation.credentials import RotationUnsupported, rotating
    from opsbook.secrets import Redactor

    action = "secrets rotate"
    try:
        allow = parse_allow(args.allow)
        inventory = load_inventory(inventory_path(args.inventory))
    except (ValueError, InventoryError) as exc:
        print(f"{action}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    redact = Redactor(secret.reveal() for secret in inventory.secrets())
    for credential in inventory.credentials.values():
        # The current values too, should any text ever carry one (they are never printed).
        with contextlib.suppress(OSError, UnicodeDecodeError):  # the plan says so: it needs it
            redact.add(credential.file.read_text(encoding="utf-8").strip())
    fix = rotating(args.only, redact.add)
    ctx = Context(inventory, "secrets", "deployment", inventory.name, fix=fix)
    try:
        # The plan is shown before the lock is asked for; a credential opsbook may not rotate
        # is a usage error, not a failed step.
        plan = fix(ctx, apply=False)
    except RotationUnsupported as exc:
        print(redact(f"{action}: {exc}"), file=sys.stderr)
        return EXIT_USAGE
    print(f"{action}: plan")
    for line in plan.lines():
        print(redact(f"  {line}"))
    if not args.apply:
        print(f"{action}: nothing changed (add --apply --allow=rotate to rotate)")
        return 0
    reports = args.reports_dir or reports_dir()
    remediator = Remediator(inventory, reports, f"cli-{os.getpid()}", frozenset(allow))
    return said(action, remediator.apply_one(fix, ctx, apply=True, redact=redact), redact)
