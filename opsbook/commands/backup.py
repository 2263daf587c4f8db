"""`python -m opsbook backup [take|list|restore NAME]`: opsbook's backups, from cron or by hand.

    backup [take]                      pg_dump, Redis RDB and data tar into backup.dir, then
                                       delete opsbook's backups past backup.retention_days
    backup list                        every backup: age, size, complete or what is wrong
    backup restore NAME|latest         the restore plan; with --apply --allow=restore, carry it
                                       out under the remediation lock, budgets and audit log:
                                       the writers stopped, PostgreSQL, Redis's queue lists and
                                       the data paths restored, the writers started again (also
                                       after a failed step), then readiness and the canary
           [--maintenance]             the frontend's maintenance page on meanwhile
           [--allow=restore-live]      go on although a writer cannot be stopped

The inventory is found as pytest finds it: --inventory, else $OPSBOOK_INVENTORY, else the
sandbox's. The last line of `take` is the new backup's path.

Exit codes: 0 done (a restore: restored, and the stack answered and passed the canary); 1 the
backup or restore failed, or the stack was not healthy after it (one line on stderr saying
which step, and what was done afterwards: the writers started again); 2 bad usage or no
backup: section; 3 the restore was refused (not allowed, over budget, lock held; writers it
had stopped are started again); 11 the restore was done, but the audit log could not take its
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
from opsbook.remediate.plan import risky_kinds

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3


def register(commands: Any) -> None:
    parser = commands.add_parser("backup", help="take, list or restore opsbook's backups")
    parser.set_defaults(run=run)
    parser.add_argument("action", nargs="?", default="take", choices=("take", "list", "restore"))
    parser.add_argument("name", nargs="?", help="restore: a backup's name, or latest")
    parser.add_argument(
        "--inventory", type=Path, help="default: $OPSBOOK_INVENTORY, else the sandbox's"
    )
    parser.add_argument("--apply", action="store_true", help="restore: carry out the plan")
    parser.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="KIND",
        help=f"allow a risky kind of fix (restore needs restore): {', '.join(risky_kinds())}",
    )
    parser.add_argument(
        "--maintenance",
        action="store_true",
        help="restore: the frontend's maintenance page on while the writers are stopped",
    )
    parser.add_argument("--reports-dir", type=Path, default=reports_dir())


def _size(total: int) -> str:
    return f"{total / 1024 / 1024:.1f} MiB" if total >= 1024 * 1024 else f"{total / 1024:.0f} KiB"


def run(args: argparse.Namespace) -> int:
    from opsbook.backup import BackupError
    from opsbook.inventory import InventoryError, load_inventory

    path = inventory_path(args.inventory)
    try:
        inventory = load_inventory(path)
    except InventoryError as exc:
        print(f"backup: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if inventory.backup is None:
        print(f"backup: inventory {path} has no backup: section", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.action == "list":
            return _list(inventory)
        if args.action == "restore":
            if not args.name:
                print("backup: restore needs a backup's name (or latest)", file=sys.stderr)
                return EXIT_USAGE
            return _restore(inventory, args)
        return _take(inventory)
    except BackupError as exc:
        print(f"backup: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _take(inventory: Any) -> int:
    from opsbook.backup import prune, take_backup

    info = take_backup(inventory)
    total = sum(int(part["size"]) for part in info.parts().values())
    for file, part in sorted(info.parts().items()):
        print(f"  {file:<28} {_size(int(part['size'])):>10}  sha256 {part['sha256'][:16]}...")
    deleted = prune(inventory.backup.dir, inventory.backup.retention_days)
    if deleted:
        print(
            f"deleted past retention ({inventory.backup.retention_days} days): {', '.join(deleted)}"
        )
    print(f"backup {info.name}: {len(info.parts())} parts, {_size(total)}")
    print(info.path)
    return 0


def _list(inventory: Any) -> int:
    from opsbook.backup import list_backups, verify

    backups = list_backups(inventory.backup.dir)
    if not backups:
        print(f"no backup in {inventory.backup.dir}")
    for info in backups:
        problems = verify(info)
        total = sum(int(part.get("size", 0)) for part in info.parts().values())
        state = "complete" if not problems else "INCOMPLETE: " + "; ".join(problems)
        print(f"{info.name}  {info.age_s() / 3600:7.1f} h old  {_size(total):>10}  {state}")
    return 0


def _restore(inventory: Any, args: argparse.Namespace) -> int:
    from opsbook.remediate.context import Context
    from opsbook.remediate.plan import parse_allow
    from opsbook.remediate.runner import Remediator
    from opsbook.remediation.backup import restore_backup, restore_backup_in_maintenance
    from opsbook.secrets import Redactor

    try:
        allow = parse_allow(args.allow)
    except ValueError as exc:
        print(f"backup: {exc}", file=sys.stderr)
        return EXIT_USAGE
    remediator = Remediator(inventory, args.reports_dir, f"cli-{os.getpid()}", allow)
    redact = Redactor(secret.reveal() for secret in inventory.secrets())
    ctx = Context(inventory, "BACKUP-RESTORE", "backup", args.name)
    fix = restore_backup_in_maintenance if args.maintenance else restore_backup
    attempt = remediator.apply_one(fix, ctx, apply=args.apply, redact=redact)
    print(redact(f"restore {args.name}: {attempt.summary()}"))
    for line in attempt.plan.lines() if attempt.plan else []:
        print(redact(f"  {line}"))
    if attempt.status in ("refused", "skipped"):
        print(redact(f"backup: restore {args.name} {attempt.status}: {attempt.reason}"),
              file=sys.stderr)  # fmt: skip
        return EXIT_REFUSED
    if attempt.status == "failed":
        print(redact(f"backup: restore {args.name} failed: {attempt.reason}"), file=sys.stderr)
        return EXIT_FAILED
    if attempt.not_audited:
        print(
            f"backup: restore {args.name} {attempt.status}, {attempt.not_audited}", file=sys.stderr
        )
        return EXIT_NOT_AUDITED
    return 0
