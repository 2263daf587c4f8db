"""`opsbook list [--inventory PATH]... [-m EXPR] [--checks DIR]... [--format F]`: every check.

One line per check: id, severity, cadences, area, title (the first line of its docstring) and
its linked fix; with an inventory, the targets it runs on; with a fleet (`--inventory` given
several times, or a folder of inventories, as a run takes them), each deployment's targets.
Built on pytest's own collection (`--collect-only`, in this process), so it lists exactly what
`opsbook check` would run, with the same selection (`-m "daily and queue"`) and the same
validation of every check. The inventory is found as `opsbook check` finds it (--inventory,
else $OPSBOOK_INVENTORY, else the sandbox's, else none) and is loaded without its secrets:
their files and variables need not exist here.

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
        action="append",
        help="list the checks' targets in this deployment (its secrets are not read); several "
        "times, or a fleet's folder: each deployment's",
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


def pytest_command(args: argparse.Namespace, inventory: str | None) -> list[str]:
    from opsbook.commands.check import pytest_args

    passed = ["--collect-only", "-q", "--no-reports"]
    if inventory is not None:
        passed.append(f"--inventory={inventory}")
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


def fleet_text(checks: list[Listed], by_deployment: dict[str, dict[str, Listed]]) -> str:
    """as_text's columns, each check's targets by deployment after its title."""
    for check in checks:
        targets, absent = [], []
        for name, listed in by_deployment.items():
            found = listed.get(check.check_id)
            if found is not None and found.targets:
                targets.append(f"{name}: {', '.join(found.targets)}")
            elif found is not None and found.not_applicable:
                absent.append(f"{name} ({found.not_applicable})")
        check.title += f"  [{'; '.join(targets)}]" if targets else ""
        check.title += f"  -- not applicable in {'; '.join(absent)}" if absent else ""
    lines = as_text(checks, None).splitlines()
    lines[-1] += f", deployments {', '.join(by_deployment)}"
    return "\n".join(lines)


def fleet_json(checks: list[Listed], by_deployment: dict[str, dict[str, Listed]]) -> str:
    """The listing's JSON with `targets` and `not_applicable` by deployment."""

    def by_name(check: Listed, what: str) -> dict[str, Any]:
        found = {name: listed.get(check.check_id) for name, listed in by_deployment.items()}
        return {
            name: getattr(listed, what)
            for name, listed in found.items()
            if listed is not None and getattr(listed, what)
        }

    rows = [
        {
            **check.as_json(),
            "targets": by_name(check, "targets"),
            "not_applicable": by_name(check, "not_applicable"),
        }
        for check in checks
    ]
    return json.dumps({"deployments": list(by_deployment), "checks": rows}, indent=2)


def _inventories(given: list[str]) -> list[tuple[str | None, str | None]]:
    """(deployment, inventory) to list: one (None, the given path or None), or a fleet's
    deployments by name. FleetError names what is wrong with a fleet."""
    paths = [Path(path).expanduser() for path in given]
    if len(paths) < 2 and not any(path.is_dir() for path in paths):
        return [(None, given[0] if given else None)]
    from opsbook import fleet

    chosen = fleet.deployments(paths, None)
    if len(chosen) == 1:
        return [(None, str(chosen[0].inventory))]
    return [(deployment.name, str(deployment.inventory)) for deployment in chosen]


def _collect(args: argparse.Namespace, inventory: str | None) -> tuple[int, Lister]:
    """The checks a run with this inventory would collect, and pytest's exit code."""
    lister = Lister()
    # pytest's own listing is not the output; a usage error still reaches stderr in one line.
    with contextlib.redirect_stdout(io.StringIO()):
        code = int(pytest.main(pytest_command(args, inventory), plugins=[lister]))
    for line in lister.broken:
        print(f"opsbook list: {line}", file=sys.stderr)
    return code, lister


def run(args: argparse.Namespace) -> int:
    given = args.inventory or []
    if any(not path.strip() for path in given):
        print("opsbook list: --inventory: empty path", file=sys.stderr)
        return 4
    missing = [folder for folder in args.checks if not folder.is_dir()]
    if missing:
        print(f"opsbook list: --checks {missing[0]}: no such folder", file=sys.stderr)
        return 2
    from opsbook.fleet import FleetError

    try:
        inventories = _inventories(given)
    except FleetError as exc:
        print(f"opsbook list: {exc}", file=sys.stderr)
        return 4
    by_deployment: dict[str, dict[str, Listed]] = {}
    for name, inventory in inventories:
        code, lister = _collect(args, inventory)
        if code not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            return code
        if name is None:  # one deployment, or none
            checks = sorted(lister.checks.values(), key=lambda c: c.check_id)
            if args.format == "json":
                document = {
                    "deployment": lister.deployment,
                    "checks": [c.as_json() for c in checks],
                }
                print(json.dumps(document, indent=2))
            else:
                print(as_text(checks, lister.deployment))
            return code
        by_deployment[name] = lister.checks
    # The checks themselves are the same in every deployment: only their targets differ.
    every = {check_id: c for checks in by_deployment.values() for check_id, c in checks.items()}
    checks = [
        Listed(**{**vars(every[check_id]), "targets": [], "not_applicable": None})
        for check_id in sorted(every)
    ]
    print(
        fleet_json(checks, by_deployment)
        if args.format == "json"
        else fleet_text(checks, by_deployment)
    )
    return code
