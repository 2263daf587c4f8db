"""`python -m opsbook audit-log verify`: is the deployment's remediation audit log intact?

Checks the chain of MACs of the deployment's audit log (in its state directory, found from the
inventory as every command finds it), and compares the log with its anchor: the head exported
to node-exporter's textfile collector or a Pushgateway (where the inventory configures them),
and the head the newest run recorded in reports/latest/findings.json (a weaker anchor: whoever
writes the reports can change it). Fixes whose run ended before they did are listed, as notes.

Exit codes: 0 intact; 1 tampered or damaged (each problem on its own line); 2 bad usage (an
unreadable inventory or key, an anchor that cannot be read, a --reports-dir that does not exist:
a mistyped path must not pass for an intact log).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from opsbook.locations import inventory_path, reports_dir

EXIT_TAMPERED = 1
EXIT_USAGE = 2


def register(commands: Any) -> None:
    parser = commands.add_parser("audit-log", help="verify the remediation audit log")
    parser.set_defaults(run=run)
    parser.add_argument("action", choices=["verify"])
    parser.add_argument("--inventory", type=Path, help="the deployment (default: as pytest)")
    parser.add_argument(
        "--reports-dir", type=Path, help="whose newest run's record to compare with"
    )


def _recorded(args: argparse.Namespace) -> dict[str, Any] | None:
    """The newest run's summary (FindingsUnreadable when damaged); None when there is none."""
    from opsbook.findings_file import read_findings

    reports = args.reports_dir if args.reports_dir is not None else reports_dir()
    latest = reports / "latest" / "findings.json"
    if not latest.exists():
        return None
    run = read_findings(latest)["run"]
    return run if isinstance(run, dict) else None


def _head(run: dict[str, Any] | None, deployment: str) -> Any:
    """The head the newest run recorded, if it ran against this deployment."""
    from opsbook.remediate.audit import Head

    if run is None or run.get("inventory") not in (None, deployment):
        return None  # another deployment's run anchors another log
    return Head.from_dict(run["audit_head"]) if run.get("audit_head") else None


def run(args: argparse.Namespace) -> int:
    from opsbook.findings_file import FindingsUnreadable
    from opsbook.inventory import InventoryError, load_inventory
    from opsbook.remediate.audit import AuditKeyError, load_key, verify
    from opsbook.remediate.runner import AUDIT, anchor_of, key_path, state_dir

    def usage(message: str) -> int:
        print(f"audit-log verify: {message}", file=sys.stderr)
        return EXIT_USAGE

    if args.reports_dir is not None and not args.reports_dir.is_dir():
        # A mistyped path must not read as an intact log with nothing to compare.
        return usage(f"no reports folder at {args.reports_dir}")
    try:
        newest = _recorded(args)
    except FindingsUnreadable as exc:
        # The record is part of what is verified: a damaged one is a finding, not a pass.
        print(f"audit-log verify: the anchor cannot be read: {exc}", file=sys.stderr)
        return EXIT_TAMPERED
    try:
        inventory = load_inventory(inventory_path(args.inventory))
    except InventoryError as exc:
        return usage(str(exc))
    path = state_dir(inventory) / AUDIT
    anchor = anchor_of(inventory)
    try:
        exported = anchor.read() if anchor.configured else None
    except OSError as exc:
        return usage(f"the anchor cannot be read: {exc}")
    try:
        recorded = _head(newest, inventory.name)
    except (KeyError, TypeError, ValueError) as exc:
        print(f"audit-log verify: the anchor cannot be read: {exc}", file=sys.stderr)
        return EXIT_TAMPERED
    if not path.exists() and exported is None and recorded is None:
        print(f"{path}: no audit log yet (0 entries)")
        return 0
    try:
        # A log that is gone has no MACs to check: that it is gone is the finding.
        key = load_key(key_path(inventory), create=False) if path.exists() else b""
    except AuditKeyError as exc:
        return usage(str(exc))
    verdict = verify(path, key, exported, recorded)
    for problem in verdict.problems:
        print(f"{path}: {problem}", file=sys.stderr)
    for note in verdict.notes:
        print(f"{path}: note: {note}")
    if verdict.problems:
        return EXIT_TAMPERED
    against = f", anchored at {anchor.where()}" if anchor.configured else ", not anchored"
    print(f"{path}: intact ({verdict.count} entries{against})")
    return 0
