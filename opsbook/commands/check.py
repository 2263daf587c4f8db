"""`opsbook check [--checks DIR]... [pytest options]`: run the packaged checks from any folder.

Everything but `--checks` goes to pytest as given: `-m daily`, `--inventory PATH` (or
`--inventory=PATH`), `-n 2`, `--lf`, `-k`, `--remediate=plan`. The checks are opsbook's own
(`opsbook.checks`, the checkout's checks/ in a checkout), plus every folder given with
`--checks DIR`: check modules of your own (`test_*.py` using `from opsbook import check`), run
beside the packaged ones without editing opsbook.

Reports go to <home>/reports unless --reports-dir says otherwise, and the sandbox's inventory is
looked for under <home> (opsbook.locations says what home is). The exit code is pytest's
(0 all passed, 1 a check failed, 10 a target could not be reached, ...; docs/operating.md).
Exit 2 with one line: a --checks folder that does not exist.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opsbook.locations import CHECKS, home, is_checkout, reports_dir, state_dir

# pytest's settings for the packaged checks when there is no checkout (and so no pyproject.toml)
# around them; tests/test_installed.py holds them equal to the checkout's.
INSTALLED_INI = CHECKS / "opsbook.ini"


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "check",
        help="run the checks (any pytest option: -m daily, --inventory PATH, -n 2, --lf)",
        description=__doc__.split("\n")[0],
        # pytest's own options go on to pytest: `--check=ID` is opsbook's check selection,
        # never a shortening of --checks.
        allow_abbrev=False,
    )
    parser.set_defaults(run=run, takes_pytest_args=True)
    parser.add_argument(
        "--checks",
        metavar="DIR",
        type=Path,
        action="append",
        default=[],
        help="a folder of check modules of your own, run beside the packaged ones (repeatable)",
    )


def _given(args: Sequence[str], option: str) -> bool:
    return any(arg == option or arg.startswith(option + "=") for arg in args)


# opsbook's options that take a value. pytest decides its rootdir before any plugin has said
# which options it has, and takes the PATH of `--inventory PATH` for a folder of tests (the
# rootdir then lands there, and the checks are never found): joined into `--inventory=PATH`,
# either spelling works.
VALUE_OPTIONS = {
    "--allow",
    "--check",
    "--fleet-jobs",
    "--inventory",
    "--metrics-textfile",
    "--pushgateway",
    "--recheck-into",
    "--remediate",
    "--reports-dir",
    "--reports-group",
    "--shard",
    "--waivers",
}


def joined(passed: Sequence[str]) -> list[str]:
    """`--inventory PATH` as `--inventory=PATH` (and the like for every option of opsbook's)."""
    out: list[str] = []
    values = iter(passed)
    for arg in values:
        if arg in VALUE_OPTIONS:
            value = next(values, None)
            out.append(arg if value is None else f"{arg}={value}")
        else:
            out.append(arg)
    return out


def pytest_args(extra_checks: Sequence[Path], passed: Sequence[str]) -> list[str]:
    """The pytest command line that runs the packaged checks (and the user's) from here."""
    passed = joined(passed)
    args = [str(CHECKS), *(str(folder.resolve()) for folder in extra_checks)]
    if not is_checkout(CHECKS.parent):
        # Installed: pytest's settings come with the package, the rootdir is the package, so
        # that test ids read `checks/test_health.py::...` as in a checkout, and the cache lives
        # in opsbook's home, not in site-packages.
        args += ["-c", str(INSTALLED_INI), "--rootdir", str(CHECKS.parent)]
        args += ["-o", f"cache_dir={state_dir('pytest-cache')}"]
    if not (_given(passed, "--reports-dir") or "--no-reports" in passed):
        args.append(f"--reports-dir={reports_dir()}")
    return [*args, *passed]


def run(args: argparse.Namespace) -> int:
    import pytest

    missing = [folder for folder in args.checks if not folder.is_dir()]
    if missing:
        print(f"opsbook check: --checks {missing[0]}: no such folder", file=sys.stderr)
        return 2
    # The plugin finds the sandbox's inventory under pytest's rootdir; an installed run's
    # rootdir is the package, so name opsbook's home instead.
    if not is_checkout(CHECKS.parent):
        os.environ.setdefault("OPSBOOK_SANDBOX_DIR", str(home() / ".opsbook" / "sandbox"))
    return int(pytest.main(pytest_args(args.checks, args.pytest_args)))
