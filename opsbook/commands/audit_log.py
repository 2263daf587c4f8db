"""`python -m opsbook audit-log verify`: is the remediation audit log intact?

Checks the hash chain of reports/audit.log, and compares it with the head recorded by the
newest run (reports/latest/findings.json), which catches deleted newest entries too.
Exit codes: 0 intact; 1 tampered (each problem on its own line); 2 bad usage (no such
reports folder: a mistyped path must not pass for an empty, intact log).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from opsbook.locations import reports_dir


def register(commands: Any) -> None:
    parser = commands.add_parser("audit-log", help="verify the remediation audit log")
    parser.set_defaults(run=run)
    parser.add_argument("action", choices=["verify"])
    parser.add_argument("--reports-dir", type=Path, default=reports_dir())


def run(args: argparse.Namespace) -> int:
    from opsbook.remediate.audit import verify
    from opsbook.remediate.runner import AUDIT

    if not args.reports_dir.is_dir():
        # A mistyped path must not read as an intact, empty log.
        print(f"audit-log verify: no reports folder at {args.reports_dir}", file=sys.stderr)
        return 2
    path = args.reports_dir / AUDIT
    latest = args.reports_dir / "latest" / "findings.json"
    anchor = None
    if latest.exists():
        from opsbook.findings_file import FindingsUnreadable, read_findings

        try:
            anchor = read_findings(latest)["run"].get("audit_head")
        except FindingsUnreadable as exc:
            # The anchor is part of what is verified: a damaged one is a finding, not a pass.
            print(f"audit-log verify: the anchor cannot be read: {exc}", file=sys.stderr)
            return 1
    problems = verify(path, anchor)
    if problems:
        for problem in problems:
            print(f"{path}: {problem}", file=sys.stderr)
        return 1
    count = sum(1 for line in path.read_text().splitlines() if line.strip()) if path.exists() else 0
    print(f"{path}: intact ({count} entries)")
    return 0
