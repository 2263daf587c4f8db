"""`python -m opsbook remediate RUN --check ID [--apply]`: fix what a finished run found.

RUN is `latest`, a run folder's name under the reports directory, or its path. Without
`--apply` the plan is printed and nothing changes. With `--apply` the plan is carried out
under the same lock, allow-list and budgets as `pytest --remediate=apply`, then the check is
run again until it passes or the inventory's `remediation.verify_timeout_s` runs out.

    python -m opsbook remediate --reset-budget [KIND:SERVICE] [--inventory PATH]
                                                    release the deployment's brake

Exit codes: 0 fixed, planned, or nothing to do; 1 applied but NOT FIXED, or the fix failed;
2 bad usage (unknown run, check, kind or inventory; a run whose findings.json cannot be read,
in one line saying why); 3 refused (not allowed, over budget, or another run holds the
remediation lock, or it cannot be written); 11 fixed, but the audit log could not take the
entry (a full disk, say: the output says why), as a checks run exits.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsbook.locations import reports_dir
from opsbook.remediate.audit import EXIT_NOT_AUDITED
from opsbook.remediate.plan import risky_kinds

if TYPE_CHECKING:
    from opsbook.inventory import Inventory
    from opsbook.remediate.runner import Attempt, Remediator

EXIT_NOT_FIXED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
VERIFY_INTERVAL_S = 0.5
ALLOW_HELP = f"allow a risky kind of fix: {', '.join(risky_kinds())}"


class Usage(Exception):
    """Bad input: one line for stderr, exit 2."""


def register(commands: Any) -> None:
    parser = commands.add_parser("remediate", help="show or apply the fix of a failed check")
    parser.set_defaults(run=run)
    parser.add_argument("run_ref", nargs="?", metavar="RUN", help="latest, a run name, or path")
    parser.add_argument("--check", metavar="ID", help="the failed check to fix")
    parser.add_argument("--target", metavar="NAME", help="only this target of the check")
    parser.add_argument("--apply", action="store_true", help="carry out the plan, then verify")
    parser.add_argument("--allow", action="append", default=[], metavar="KIND", help=ALLOW_HELP)
    parser.add_argument("--inventory", type=Path, help="default: the run's inventory")
    parser.add_argument("--reports-dir", type=Path, default=reports_dir())
    parser.add_argument("--reset-budget", nargs="?", const="*", metavar="KIND:SERVICE")


def _run_dir(reports: Path, ref: str) -> Path:
    candidates = [reports / "latest"] if ref == "latest" else [Path(ref), reports / ref]
    for candidate in candidates:
        if (candidate / "findings.json").is_file():
            return candidate.resolve()
    raise Usage(f"no finished run {ref!r} (looked for findings.json under {reports})")


def _rows(run_dir: Path, check: str, target: str | None) -> tuple[dict[str, Any], list[Any]]:
    from opsbook.findings_file import FindingsUnreadable, read_findings

    try:
        document = read_findings(run_dir / "findings.json")
    except FindingsUnreadable as exc:
        raise Usage(str(exc)) from None
    rows = [r for r in document["findings"] if r["check_id"] == check]
    if not rows:
        raise Usage(f"check {check} did not run in {run_dir.name}")
    if any(not isinstance(r.get("nodeid"), str) for r in rows):
        # The check is run again by its node id: a row without one cannot be verified.
        raise Usage(f"{run_dir / 'findings.json'}: not a run's findings: {check} has no nodeid")
    if target is not None:
        rows = [r for r in rows if r.get("target") == target]
        if not rows:
            raise Usage(f"check {check} did not run on target {target} in {run_dir.name}")
    return document["run"], rows


def _import(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _verify(run: dict[str, Any], row: dict[str, Any], inventory: Path, deadline_s: float) -> str:
    """Run the check again (on that target) until it passes; '' when it does, else the message."""
    command = [
        sys.executable, "-m", "pytest", "-q", "--no-reports", f"--inventory={inventory}",
        "-p", "no:cacheprovider", row["nodeid"],
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "OPSBOOK_INVENTORY"}
    end = time.monotonic() + deadline_s
    while True:
        done = subprocess.run(
            command, cwd=run.get("rootdir") or ".", env=env, capture_output=True, text=True,
            timeout=max(60.0, deadline_s), check=False,
        )  # fmt: skip
        if done.returncode == 0:
            return ""
        if time.monotonic() >= end:
            lines = [line for line in done.stdout.splitlines() if line.startswith("FAILED")]
            return lines[0] if lines else f"pytest exited {done.returncode}"
        time.sleep(VERIFY_INTERVAL_S)


def _reset(args: argparse.Namespace) -> int:
    """The brakes are the deployment's (in its state directory): found from --inventory, as
    every command finds it."""
    from opsbook.inventory import InventoryError, load_inventory
    from opsbook.locations import inventory_path
    from opsbook.remediate.budget import Budgets
    from opsbook.remediate.runner import BUDGETS, state_dir

    try:
        inventory = load_inventory(inventory_path(args.inventory))
    except InventoryError as exc:
        raise Usage(str(exc)) from None
    budgets = Budgets(state_dir(inventory) / BUDGETS, inventory.remediation.budgets)
    try:
        keys = budgets.reset(None if args.reset_budget == "*" else args.reset_budget)
    except OSError as exc:
        raise Usage(f"--reset-budget: {exc}") from None
    print(f"reset: {', '.join(keys)}" if keys else "nothing to reset")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        if args.reset_budget is not None:
            return _reset(args)
        if not args.run_ref or not args.check:
            raise Usage("give a run and --check ID (or --reset-budget)")
        return _remediate(args)
    except Usage as exc:
        print(f"remediate: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _remediate(args: argparse.Namespace) -> int:
    from opsbook.inventory import InventoryError, load_inventory
    from opsbook.remediate.plan import parse_allow
    from opsbook.remediate.runner import Remediator
    from opsbook.secrets import Redactor

    try:
        allow = parse_allow(args.allow)
    except ValueError as exc:
        raise Usage(str(exc)) from None
    run_dir = _run_dir(args.reports_dir, args.run_ref)
    summary, rows = _rows(run_dir, args.check, args.target)
    inventory_path = args.inventory or (
        Path(summary["inventory_path"]) if summary.get("inventory_path") else None
    )
    if inventory_path is None:
        raise Usage("the run does not say which inventory it used: pass --inventory")
    try:
        inventory = load_inventory(inventory_path)
    except InventoryError as exc:
        raise Usage(str(exc)) from None
    redact = Redactor(secret.reveal() for secret in inventory.secrets())
    remediator = Remediator(inventory, args.reports_dir, f"cli-{os.getpid()}", allow)
    worst = 0
    for row in rows:
        worst = max(worst, _one(row, summary, inventory, inventory_path, remediator, args, redact))
    return worst


def _one(
    row: dict[str, Any], summary: dict[str, Any], inventory: Inventory, inventory_path: Path,
    remediator: Remediator, args: argparse.Namespace, redact: Callable[[str], str],
) -> int:  # fmt: skip
    from opsbook.outcome import FixVerdict
    from opsbook.remediate.context import Context

    where = f"{row['check_id']} on {row.get('target') or '-'}"
    if row["outcome"] == "blocked":
        # Its own fix would act on a symptom (a restarted backend does not bring Redis back).
        print(f"{where}: blocked by {row.get('blocked_by') or 'a dependency'} in that run: "
              "remediate that first, then run the checks again")  # fmt: skip
        return 0
    if row["outcome"] not in ("failed", "error"):
        print(f"{where}: {row['outcome']} in that run, nothing to remediate")
        return 0
    if not row.get("remediation"):
        print(f"{where}: no remediation is linked to this check")
        return 0

    def verify(attempt: Attempt) -> None:
        if attempt.status == "applied":
            after = _verify(summary, row, inventory_path, inventory.remediation.verify_timeout_s)
            attempt.verdict = FixVerdict.NOT_FIXED if after else FixVerdict.FIXED
            attempt.after = redact(after) or "passed"

    ctx = Context(inventory, row["check_id"], row.get("target_kind") or "", row.get("target") or "")
    attempt = remediator.apply_one(
        _import(row["remediation"]), ctx, apply=args.apply, redact=redact, verify=verify
    )
    print(redact(f"{where}: {attempt.summary()}"))
    for line in attempt.plan.lines() if attempt.plan else []:
        print(redact(f"  {line}"))
    if attempt.verdict == FixVerdict.NOT_FIXED:
        print(f"  after: {attempt.after}")
    if attempt.status in ("refused", "skipped"):
        return EXIT_REFUSED
    if attempt.status == "failed" or attempt.verdict == FixVerdict.NOT_FIXED:
        return EXIT_NOT_FIXED
    return EXIT_NOT_AUDITED if attempt.not_audited else 0
