"""A run over several deployments (`--inventory` twice, or an inventory folder): opsbook.fleet.

This plugin takes over pytest's main loop only for a fleet: it starts one child run per
deployment with the same options, and ends with the worst of their exit codes. A run over one
deployment is untouched (same test ids, same report folder).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("opsbook")
    group.addoption(
        "--shard",
        metavar="I/N",
        help="check only the deployments of shard I of N (by a hash of each one's name); "
        "`opsbook merge` combines the shards' report folders",
    )
    group.addoption(
        "--fleet-jobs",
        metavar="N",
        type=int,
        default=16,
        help="a fleet's deployments checked at once (default: 16)",
    )
    group.addoption(
        "--fleet-start",
        choices=("fork", "spawn"),
        default="fork",
        help="how each deployment's run starts: forked from the fleet's process, sharing its "
        "start-up (default), or as a fresh Python process",
    )


def _given_inventories(config: pytest.Config) -> list[Path]:
    given = config.getoption("inventory") or []
    if not given and os.environ.get("OPSBOOK_INVENTORY"):
        given = [os.environ["OPSBOOK_INVENTORY"]]
    return [Path(path).expanduser() for path in given if path.strip()]


def _child_args(config: pytest.Config) -> list[str]:
    """The run's own arguments, without what the fleet sets per child."""
    args = list(config.invocation_params.args)
    kept: list[str] = []
    skip_next = False
    for arg in args:
        if skip_next:
            skip_next = False
            continue
        name = arg.split("=", 1)[0]
        if name in ("--inventory", "--shard", "--reports-dir", "--fleet-jobs", "--fleet-start"):
            skip_next = "=" not in arg
            continue
        kept.append(arg)
    return kept


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    if config.option.help or config.option.version or hasattr(config, "workerinput"):
        return None
    paths = _given_inventories(config)
    shard_text = config.getoption("shard")
    many = len(paths) > 1 or any(path.is_dir() for path in paths)
    if not (many or shard_text):
        return None
    if config.option.collectonly:
        return None  # listing the checks needs no deployment
    from opsbook import fleet  # a fleet's only: a run over one deployment does without it

    try:
        shard = fleet.parse_shard(shard_text) if shard_text else None
        chosen = fleet.deployments(paths, shard)
    except fleet.FleetError as exc:
        raise pytest.UsageError(str(exc)) from None
    reports = Path(config.getoption("reports_dir") or config.rootpath / "reports")
    if not chosen:
        print(f"opsbook fleet: no deployment in shard {shard_text}")
        return int(pytest.ExitCode.NO_TESTS_COLLECTED)
    print(f"opsbook fleet: {len(chosen)} deployments: {', '.join(d.name for d in chosen)}")
    fork = config.getoption("fleet_start") == "fork"
    if fork:
        fleet.prepare_children()
    code, folder = fleet.run_fleet(
        chosen,
        _child_args(config),
        cwd=config.invocation_params.dir,
        reports_dir=reports,
        jobs=max(1, config.getoption("fleet_jobs")),
        fork=fork,
    )
    document = json.loads((folder / fleet.FINDINGS).read_text(encoding="utf-8"))
    print("\n".join(fleet.grid_lines(document)))
    print(f"opsbook fleet report: {folder / fleet.SUMMARY}")
    return code
