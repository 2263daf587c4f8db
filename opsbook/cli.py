"""The command line, `python -m opsbook COMMAND`: one module per command in opsbook/commands.

    check       run the checks from any folder (any pytest option: -m daily, --inventory)
    list        every check: id, severity, cadences, area, title, linked fix
    inventory   check an inventory file without its secrets (for CI)
    sandbox     run a local instance of the AI chat system (up, status, down, ...)
    remediate   show or apply the fix of a check that failed in a finished run
    audit-log   verify the remediation audit log
    maintenance turn maintenance mode on or off (nginx serves the maintenance page)
    status      the health dashboard of the last run
    incident    collect the incident runbook's evidence (logs, status, sockets, a dump)
    secrets     rotate the application's credentials (files, servers, consumers), verified
    backup      back up PostgreSQL, Redis and the data paths (with a manifest)
    deploy      deploy a release behind the gates, rolled back when it fails; or roll back
    merge       one report from the shards of a fleet run (--shard i/N)

The sandbox's own command is opsbook/sandbox/command.py, in the sandbox package.
Bad usage exits 2 with one line (argparse); each command documents its other exit codes.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

from opsbook.commands import (
    audit_log,
    backup,
    check,
    deploy,
    incident,
    inventory,
    list_checks,
    maintenance,
    merge,
    remediate,
    secrets,
    status,
)

# The sandbox's command is part of the sandbox package, which production code never imports:
# it is loaded by name (tests/test_imports.py holds that rule).
SANDBOX_COMMAND = "opsbook.sandbox.command"


def _parser() -> argparse.ArgumentParser:
    from opsbook.version import describe

    parser = argparse.ArgumentParser(prog="opsbook", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=describe())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sandbox = importlib.import_module(SANDBOX_COMMAND)
    for command in (
        check,
        list_checks,
        inventory,
        sandbox,
        remediate,
        audit_log,
        maintenance,
        status,
        incident,
        secrets,
        backup,
        deploy,
        merge,
    ):
        command.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    # `opsbook check` passes every option it does not know on to pytest; no other command
    # takes options it does not declare.
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "takes_pytest_args", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.pytest_args = rest
    return int(args.run(args))
