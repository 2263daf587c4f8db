"""`opsbook list [--inventory PATH] [-m EXPR] [--checks DIR]... [--format text|json]`: every check.

One line per check: id, severity, cadences, area, title (the first line of its docstring) and
its linked fix; with an inventory, the targets it runs on. Built on pytest's own collection
(`--collect-only`, in this process), so it lists exactly what `opsbook check` would run, with the
same selection (`-m "daily and queue"`) and the same validation of every check. The inventory is
found as `opsbook check` finds it (--inventory, else $OPSBOOK_INVENTORY, else the sandbox's, else
none) and is loaded without its secrets: their files and variables need not exist here.

Exit codes are pytest's: 0 listed, 4 a bad inventory or an invalid check (one line), 5 no check
selected (`-m` matched none), 2 a check module that cannot be imported (one line per module).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "list",
        help="list every check: id, severity, cadences, area, title, linked fix",
        description=__doc__.split("\n")[0],
    )
    parser.set_defaults(run=run)
    parser.add_argument(
        "--inventory",
        metavar="PATH",
        help="list the checks' targets in this deployment (its secrets are not read)",
    )
    parser.add_argument("-m", dest="markexpr", metavar="EXPR", help='select, e.g. "daily"')
    parser.add_argument(
        "--checks",
        metavar="DIR",
        type=Path,
        action="append",
        default=[],
        help="a folder of check modules of your own, listed beside the packaged ones",
    )
    parser.add_argument("--format", choices=("text", "json"), default="text")


@dataclass
class Listed:
    """One check as listed: what it declares, and the targets it runs on."""

    check_id: str
    severity: str
    cadences: list[str]
    areas: list[str]
    title: str
    remediation: str | None
    module: str
    targets: list[str] = field(default_factory=list)
    # Why it runs on nothing in this deployment (`no compose service in the inventory`).
    not_applicable: str | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.check_id,
            "severity": self.severity,
            "cadences": self.cadences,
            "areas": self.areas,
            "title": self.title,
            "remediation": self.remediation,
            "module": self.module,
            "targets": self.targets,
            "not_applicable": self.not_applicable,
        }


class Lister:
    """A pytest plugin that keeps what collection learned about each selected check."""

    def __init__(self) -> None:
        self.checks: dict[str, Listed] = {}
        self.deployment: str | None = None
        self.broken: list[str] = []

    @pytest.hookimpl(tryfirst=True)
    def pytest_cmdline_main(self, config: pytest.Config) -> None:
        from opsbook.plugin.inventory_option import READ_SECRETS

        # Said before pytest_configure, where the inventory is loaded: without its secrets.
        config.stash[READ_SECRETS] = False

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            lines = [line for line in report.longreprtext.splitlines() if line.strip()]
            last = lines[-1].strip().removeprefix("E").strip() if lines else "failed"
            self.broken.append(f"{report.nodeid}: {last}")

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        from opsbook.check import AREAS, CADENCES, spec_of
        from opsbook.plugin.keys import CHECK, INVENTORY

        inventory = session.config.stash.get(INVENTORY, None)
        self.deployment = inventory.name if inventory is not None else None
        for item in session.items:
            spec = spec_of(getattr(item, "obj", None))
            if spec is None or CHECK not in item.stash:
                continue  # not a check (a helper test in a user's folder)
            info = item.stash[CHECK]  # the title as collection read it, for every report
            markers = [m.name for m in item.iter_markers()]
            listed = self.checks.setdefault(
                spec.check_id,
                Listed(
                    check_id=spec.check_id,
                    severity=str(spec.severity),
                    cadences=[m for m in CADENCES if m in markers],
                    areas=[m for m in AREAS if m in markers],
                    title=info.title,
                    remediation=spec.remediation_name,
                    module=item.nodeid.split("::")[0],
                ),
            )
            skip = item.get_closest_marker("skip")
            if skip is not None:
                # Parametrized over an empty section of the inventory: nothing to check here.
                reason = skip.kwargs.get("reason") or (skip.args[0] if skip.args else "")
                listed.not_applicable = str(reason) or "skipped"
            elif info.target is not None and info.target not in listed.targets:
                listed.targets.append(info.target)


def pytest_command(args: argparse.Namespace) -> list[str]:
    from opsbook.commands.check import pytest_args

    passed = ["--collect-only", "-q", "--no-reports"]
    if args.inventory is not None:
        passed.append(f"--inventory={args.inventory}")
    if args.markexpr is not None:
        passed += ["-m", args.markexpr]
    return pytest_args(args.checks, passed)


def as_text(checks: list[Listed], deployment: str | None) -> str:
    """Aligned columns, the title last; with a deployment, each check's targets after it."""
    header = ("ID", "SEVERITY", "CADENCES", "AREA", "FIX", "TITLE")
    rows = [header]
    for c in checks:
        title = c.title
        if deployment is not None and c.targets:
            title += f"  [{', '.join(c.targets)}]"
        elif deployment is not None and c.not_applicable:
            title += f"  -- not applicable: {c.not_applicable}"
        fix = "-" if c.remediation is None else c.remediation.removeprefix("opsbook.remediation.")
        cadences, areas = ",".join(c.cadences) or "-", ",".join(c.areas) or "-"
        rows.append((c.check_id, c.severity, cadences, areas, fix, title))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = [
        "  ".join([*(value.ljust(width) for value, width in zip(row, widths, strict=False)),
                   row[-1]])
        for row in rows
    ]  # fmt: skip
    where = f", deployment {deployment}" if deployment is not None else ""
    lines.append(f"{len(checks)} checks{where}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.inventory is not None and not args.inventory.strip():
        print("opsbook list: --inventory: empty path", file=sys.stderr)
        return 4
    missing = [folder for folder in args.checks if not folder.is_dir()]
    if missing:
        print(f"opsbook list: --checks {missing[0]}: no such folder", file=sys.stderr)
        return 2
    lister = Lister()
    # pytest's own listing is not the output; a usage error still reaches stderr in one line.
    with contextlib.redirect_stdout(io.StringIO()):
        code = int(pytest.main(pytest_command(args), plugins=[lister]))
    for line in lister.broken:
        print(f"opsbook list: {line}", file=sys.stderr)
    if code not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        return code
    checks = sorted(lister.checks.values(), key=lambda c: c.check_id)
    if args.format == "json":
        document = {"deployment": lister.deployment, "checks": [c.as_json() for c in checks]}
        print(json.dumps(document, indent=2))
    else:
        print(as_text(checks, lister.deployment))
    return code
