"""`python -m opsbook deploy [--tag TAG] | deploy rollback`: the runbook's deploy, and its undo.

    deploy --tag TAG             the predeploy gate (gate commands, then -m predeploy), a
                                 backup, TAG's images (found, pulled or built), the switch,
                                 readiness, the postdeploy gate with the canary; rolled back to
                                 the release before it when the switch or the postdeploy gate
                                 fails. Every step in the audit log. (opsbook.deploy)
    deploy rollback              ROLLBACK-001's fix: the plan that brings the release before the
                                 current one back; with --apply --allow=rollback, carried out
                                 (and with --allow=restore too, the pre-deploy backup restored)

The inventory is found as pytest finds it: --inventory, else $OPSBOOK_INVENTORY, else the
sandbox's. Without --tag, the tag is the UTC time (`r20261201T141500Z`).

Exit codes of deploy: 0 deployed; 1 a gate failed (the predeploy gate: nothing was changed;
the postdeploy gate or readiness: rolled back to the release before, which then answered and
passed the canary); 2 bad usage (a bad tag, nothing to deploy with, no backup: section); 3
refused (another run holds the deployment's lock); 4 a step failed (backup, images, switch):
rolled back if anything had changed; 5 the rollback failed too (the line says what to look
at); 11 deployed, but the audit log could not take every entry (a failure keeps its own code,
and its line says so too).
Exit codes of rollback: those of `opsbook backup restore` (0 done, 1 failed, 3 refused, 11 not
audited).
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opsbook.locations import inventory_path, reports_dir
from opsbook.remediate.plan import risky_kinds

EXIT_USAGE = 2


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "deploy",
        help="deploy a release (gates, backup, images, rollback on failure), or roll it back",
        description=__doc__.split("\n")[0],
    )
    parser.set_defaults(run=run)
    parser.add_argument("action", nargs="?", default="deploy", choices=("deploy", "rollback"))
    parser.add_argument("--tag", help="the release's tag (default: r<UTC time>)")
    parser.add_argument(
        "--inventory", type=Path, help="default: $OPSBOOK_INVENTORY, else the sandbox's"
    )
    parser.add_argument("--reports-dir", type=Path, default=reports_dir())
    parser.add_argument(
        "--no-backup", action="store_true", help="deploy without the pre-deploy backup"
    )
    parser.add_argument(
        "--previous",
        metavar="TAG",
        help="commands: the release running now, when opsbook has none recorded (a first deploy)",
    )
    parser.add_argument("--apply", action="store_true", help="rollback: carry out the plan")
    parser.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="KIND",
        help=f"rollback: allow a risky kind (rollback; restore too for the backup): "
        f"{', '.join(risky_kinds())}",
    )


def run(args: argparse.Namespace) -> int:
    from opsbook.inventory import InventoryError, load_inventory
    from opsbook.secrets import Redactor

    path = inventory_path(args.inventory)
    try:
        inventory = load_inventory(path)
    except InventoryError as exc:
        print(f"deploy: {exc}", file=sys.stderr)
        return EXIT_USAGE
    redact = Redactor(secret.reveal() for secret in inventory.secrets())
    if args.action == "rollback":
        return _rollback(inventory, args, redact)
    return _deploy(inventory, path, args, redact)


def _deploy(inventory: Any, path: Path, args: argparse.Namespace, redact: Any) -> int:
    from opsbook import deploy
    from opsbook.releases import ReleaseError

    tag = args.tag or f"r{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    try:
        job = deploy.Deploy(
            inventory, path.absolute(), tag, args.reports_dir.absolute(), f"deploy-{os.getpid()}",
            redact, say=lambda line: print(redact(line), flush=True),
            backup=not args.no_backup, previous=args.previous,
        )  # fmt: skip
        result = job.run()
    except (deploy.Usage, ReleaseError) as exc:
        print(f"deploy: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if result.evidence is not None:
        print(f"evidence: {result.evidence}")
    stream = sys.stdout if result.code == deploy.EXIT_DEPLOYED else sys.stderr
    print(redact(f"deploy {tag}: {result.line}"), file=stream)
    return result.code


def _rollback(inventory: Any, args: argparse.Namespace, redact: Any) -> int:
    from opsbook.remediate.audit import EXIT_NOT_AUDITED
    from opsbook.remediate.context import Context
    from opsbook.remediate.plan import parse_allow
    from opsbook.remediate.runner import Remediator
    from opsbook.remediation.releases import rollback_release

    try:
        allow = parse_allow(args.allow)
    except ValueError as exc:
        print(f"deploy: {exc}", file=sys.stderr)
        return EXIT_USAGE
    remediator = Remediator(inventory, args.reports_dir, f"cli-{os.getpid()}", allow)
    ctx = Context(inventory, "ROLLBACK-001", "deployment", inventory.name)
    attempt = remediator.apply_one(rollback_release, ctx, apply=args.apply, redact=redact)
    print(redact(f"rollback: {attempt.summary()}"))
    for line in attempt.plan.lines() if attempt.plan else []:
        print(redact(f"  {line}"))
    if attempt.status in ("refused", "skipped"):
        return 3
    if attempt.status == "failed":
        return 1
    if attempt.not_audited:
        print(f"deploy: rollback {attempt.status}, {attempt.not_audited}", file=sys.stderr)
        return EXIT_NOT_AUDITED
    return 0
