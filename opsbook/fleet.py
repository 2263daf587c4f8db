"""A fleet: one run over several deployments, each checked by a pytest run of its own.

`--inventory` given several times, or `--inventory DIR` (every inventory file in it), makes a
run a fleet run. Each deployment is checked by a child pytest process with the same options and
its one inventory, all at once, so that a deployment that hangs delays nobody: a child's verdict
is its own, and its lock, budgets and audit log are its deployment's. The children's
findings are then merged into one findings.json (every row names its deployment) with a fleet
summary in front of the deployments' own reports. The children are forked from the fleet's
process once it has imported what they need, so ten deployments do not pay Python's and
pytest's start-up ten times (`--fleet-start=spawn` starts each afresh instead).

Only files that are inventories count in an inventory folder: YAML mappings with a top-level
`name` and at least one section of targets (http, postgres, redis, hosts, prometheus, grafana,
compose, services). A waivers file (`waivers:`), a secret, a README or a hidden file beside them
is not one.

`--shard i/N` keeps the deployments whose name hashes to shard i of N (SHA-256 of the name):
adding a deployment moves only that one, so a CI matrix or a Kubernetes indexed CronJob can run
the shards on many runners; `opsbook merge` then combines the shards' folders.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import yaml

from opsbook.check import AREAS
from opsbook.pages import status_page

TARGET_SECTIONS = {"http", "postgres", "redis", "hosts", "prometheus", "grafana", "compose"}
TARGET_SECTIONS |= {"services"}
INVENTORY_SUFFIXES = {".yaml", ".yml"}
FINDINGS = "findings.json"
SUMMARY = "summary.html"
JUNIT = "junit.xml"
STATUS_PAGE = "status.html"  # every deployment's targets, worst first (opsbook.pages)
# Which exit code a fleet run ends with when its deployments' differ: the worst, in this order.
# pytest's internal error and usage error first, then an unreachable target (10), then a
# failed check (1); "no check selected" (5) only when it is every deployment's.
EXIT_PRECEDENCE = (3, 4, 2, 10, 1, 0, 5)
WORST_FIRST = ("error", "failed", "blocked", "waived", "fixed", "passed", "skipped")


class FleetError(Exception):
    """A fleet that cannot run: no inventory in a folder, two deployments with one name."""


def is_inventory(path: Path) -> bool:
    """Whether a file in an inventory folder is an inventory (the module's docstring: the rule)."""
    if path.name.startswith(".") or path.suffix not in INVENTORY_SUFFIXES or not path.is_file():
        return False
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        # Not readable as YAML: the child run that loads it says why, if it is an inventory.
        return False
    return (
        isinstance(document, dict)
        and isinstance(document.get("name"), str)
        and bool(TARGET_SECTIONS & document.keys())
        and "waivers" not in document
    )


def inventory_files(given: Iterable[Path]) -> list[Path]:
    """The inventories named: files as given, folders expanded to the inventories in them."""
    found: list[Path] = []
    for path in given:
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if is_inventory(p))
            if not inside:
                raise FleetError(f"inventory folder {path}: no inventory file in it")
            found += inside
        else:
            found.append(path)
    return list(dict.fromkeys(found))


def deployment_name(path: Path) -> str:
    """The inventory's `name` (its file's stem when it has none: its own run then says why)."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return path.stem
    name = document.get("name") if isinstance(document, dict) else None
    return name if isinstance(name, str) and name else path.stem


def parse_shard(text: str) -> tuple[int, int]:
    """`2/4` -> (2, 4): shard 2 of 4, counted from 1."""
    index, _, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        raise FleetError(f"--shard {text!r}: expected i/N, like 1/4") from None
    if not 1 <= i <= n:
        raise FleetError(f"--shard {text!r}: i must be between 1 and N")
    return i, n


def shard_of(name: str, count: int) -> int:
    """The shard (1..count) a deployment belongs to, from a hash of its name alone."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count + 1


@dataclass(frozen=True)
class Deployment:
    name: str
    inventory: Path


def deployments(paths: Sequence[Path], shard: tuple[int, int] | None) -> list[Deployment]:
    """The fleet's deployments (names unique), those of one shard when sharded."""
    chosen = [Deployment(deployment_name(path), path) for path in inventory_files(paths)]
    seen: dict[str, Path] = {}
    for deployment in chosen:
        other = seen.setdefault(deployment.name, deployment.inventory)
        if other != deployment.inventory:
            raise FleetError(
                f"deployment {deployment.name!r} is named by two inventories: "
                f"{other} and {deployment.inventory} (names must be unique)"
            )
    if shard is not None:
        index, count = shard
        chosen = [d for d in chosen if shard_of(d.name, count) == index]
    return chosen


def worst_exit(codes: Iterable[int]) -> int:
    found = set(codes)
    for code in EXIT_PRECEDENCE:
        if code in found:
            return code
    return max(found, default=0)


# What a deployment's run imports after pytest's start-up: imported once by the fleet, before
# its children are forked, so that ten children do not import them ten times. The packages are
# imported whole: the checks reach their probes, the fixes linked to them and the runtimes by
# name. (Ten healthy deployments, side by side: 6.9 s of CPU with the short list, 6.6 s with the
# packages, 6.4 s with the fleet's objects frozen too.)
CHILD_IMPORTS = (
    "psycopg", "redis", "ssl", "testinfra.host", "testinfra.backend.local", "tarfile", "zoneinfo",
    "email.message", "prometheus_client", "pdb", "faulthandler", "resource",
    "opsbook.targets", "opsbook.http", "opsbook.check", "opsbook.remediate.plan",
    "opsbook.waivers", "opsbook.canary", "opsbook.deploy", "opsbook.version",
    # The codecs a host name and a report take (a socket's host name goes through IDNA).
    "encodings.idna", "encodings.ascii", "encodings.unicode_escape",
)  # fmt: skip
CHILD_PACKAGES = (
    "opsbook.probes", "opsbook.remediate", "opsbook.remediation", "opsbook.backup",
    "opsbook.sandbox",
)  # fmt: skip


class _Forked:
    """A child forked from this process: polled like a subprocess."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


@dataclass
class Child:
    deployment: Deployment
    folder: Path
    process: subprocess.Popen[bytes] | _Forked
    started: float
    exit_code: int | None = None
    seconds: float = 0.0


def run_fleet(
    chosen: Sequence[Deployment],
    pytest_args: Sequence[str],
    *,
    cwd: Path,
    reports_dir: Path,
    jobs: int,
    fork: bool = True,
) -> tuple[int, Path]:
    """Check every deployment in a child pytest run (at most `jobs` at once), merge, and
    return the fleet's exit code and its folder."""
    started = datetime.now(UTC)
    fleet_id = secrets.token_hex(4)
    folder = reports_dir / f"{started:%Y%m%dT%H%M%SZ}-fleet-{fleet_id}"
    folder.mkdir(parents=True)
    waiting = list(chosen)
    running: list[Child] = []
    done: list[Child] = []
    while waiting or running:
        while waiting and len(running) < jobs:
            deployment = waiting.pop(0)
            running.append(_start(deployment, pytest_args, cwd, folder, fork))
        for child in list(running):
            code = child.process.poll()
            if code is None:
                continue
            child.exit_code, child.seconds = code, time.monotonic() - child.started
            running.remove(child)
            done.append(child)
            print(_one_line(child), flush=True)
        if running:
            time.sleep(0.05)  # children's exits are polled: no wait may favour one of them
    document = merge_folders(
        [c.folder for c in done],
        started=started,
        fleet_id=fleet_id,
        exit_codes={c.folder: c.exit_code for c in done if c.exit_code is not None},
    )
    write_merged(folder, document)
    point_latest(reports_dir, folder)
    return worst_exit(c.exit_code or 0 for c in done), folder


def _start(
    deployment: Deployment, pytest_args: Sequence[str], cwd: Path, fleet: Path, fork: bool
) -> Child:
    folder = fleet / _safe(deployment.name)
    folder.mkdir()
    command = [
        sys.executable,
        "-m",
        "pytest",
        *pytest_args,
        f"--inventory={deployment.inventory}",
        f"--reports-dir={folder}",
    ]
    output = (folder / "output.txt").open("wb")
    started = time.monotonic()
    with output:
        if fork and _can_fork():
            return Child(deployment, folder, _fork(command[3:], cwd, output), started)
        env = {**os.environ, "OPSBOOK_FLEET_CHILD": "1"}
        process = subprocess.Popen(
            command, cwd=cwd, stdout=output, stderr=subprocess.STDOUT, env=env
        )
    return Child(deployment, folder, process, started)


def _can_fork() -> bool:
    """Whether a child run may be forked from this process rather than started afresh: a
    fork skips Python's and pytest's start-up (most of a child's CPU when ten share two
    cores), but is safe only while this process runs no other thread."""
    import threading

    return hasattr(os, "fork") and threading.active_count() == 1


def prepare_children() -> None:
    """Import what every child run needs once, before the children are forked."""
    from importlib import import_module
    from pkgutil import iter_modules

    names = list(CHILD_IMPORTS)
    for package in CHILD_PACKAGES:
        try:
            path = import_module(package).__path__
        except ImportError:
            continue
        names += [f"{package}.{module.name}" for module in iter_modules(path)]
    for name in names:
        try:
            import_module(name)
        except ImportError:
            continue  # the child imports (and reports) it itself
    import gc

    # The children's collections then leave the fleet's objects alone, and their pages shared.
    gc.freeze()


def _fork(pytest_args: list[str], cwd: Path, output: Any) -> _Forked:
    """A pytest run of its own in a forked child, its output into `output`."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return _Forked(pid)
    code = 3  # pytest's internal error, if the run breaks before it has its own
    try:
        os.dup2(output.fileno(), 1)
        os.dup2(output.fileno(), 2)
        os.chdir(cwd)
        os.environ["OPSBOOK_FLEET_CHILD"] = "1"
        import pytest
        from _pytest.assertion.rewrite import AssertionRewritingHook

        # The fleet's own assertion rewriter answers to the fleet's config: the child's run
        # installs its own.
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, AssertionRewritingHook)]
        code = int(pytest.main(pytest_args))
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "deployment"


def _one_line(child: Child) -> str:
    run = _read_findings(child.folder).get("run", {})
    counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(run.get("counts", {}).items()))
    return (
        f"opsbook fleet: {child.deployment.name}: exit {child.exit_code}"
        f" ({counts or 'no findings'}) in {child.seconds:.1f} s"
    )


def _read_findings(folder: Path) -> dict[str, Any]:
    """A run folder's findings.json: the folder itself, or its `latest` run."""
    for candidate in (folder / FINDINGS, folder / "latest" / FINDINGS):
        if candidate.is_file():
            document: dict[str, Any] = json.loads(candidate.read_text(encoding="utf-8"))
            return document
    return {}


def merge_folders(
    folders: Sequence[Path],
    *,
    started: datetime | None = None,
    fleet_id: str = "",
    exit_codes: dict[Path, int] | None = None,
) -> dict[str, Any]:
    """One findings document from several runs' (or fleets') folders: every row kept, each
    naming its deployment; the runs listed under run.deployments. `exit_codes` are the runs'
    own, where known (a run that broke before writing its findings still has one)."""
    exit_codes = exit_codes or {}
    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    selections: set[str | None] = set()
    for folder in folders:
        document = _read_findings(folder)
        if not document:
            code = exit_codes.get(folder)
            runs.append({"deployment": folder.name, "exit_code": code, "folder": str(folder)})
            continue
        run = document["run"]
        selections.add(run.get("selection"))
        if run.get("deployments"):  # a fleet (a shard): its deployments, as they were
            runs += run["deployments"]
        else:
            runs.append(
                {
                    "deployment": run.get("inventory", folder.name),
                    "exit_code": exit_codes.get(folder, run.get("exit_code")),
                    "counts": run.get("counts", {}),
                    "folder": str(_run_folder(folder)),
                }
            )
        rows += document.get("findings", [])
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["outcome"]] = counts.get(row["outcome"], 0) + 1
    finished = datetime.now(UTC)
    started = started or finished
    runs.sort(key=lambda r: str(r.get("deployment")))
    return {
        "schema_version": 1,
        "run": {
            "run_id": fleet_id or secrets.token_hex(4),
            "started": started.isoformat(),
            "finished": finished.isoformat(),
            "duration_s": round((finished - started).total_seconds(), 2),
            "inventory": f"fleet of {len(runs)}",
            "inventory_path": None,
            "rootdir": str(Path.cwd()),
            "selection": selections.pop() if len(selections) == 1 else None,
            # A run that left no findings and no exit code broke somewhere: an internal error.
            "exit_code": worst_exit(3 if r["exit_code"] is None else r["exit_code"] for r in runs),
            "counts": counts,
            "audit_head": None,
            "deployments": runs,
        },
        "changes": {
            "previous_run": None,
            "newly_failing": [],
            "recovered": [],
            "flapping": [],
            "trends": {},
        },
        "findings": rows,
    }


def _run_folder(folder: Path) -> Path:
    latest = folder / "latest"
    return latest.resolve() if latest.exists() else folder


def write_merged(folder: Path, document: dict[str, Any]) -> None:
    """findings.json, the fleet summary page and one junit.xml into `folder`, each written
    whole."""
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / FINDINGS, json.dumps(document, indent=2) + "\n")
    _write(folder / SUMMARY, summary_page(document, folder))
    _write(folder / STATUS_PAGE, status_page.render(document))
    _write(folder / JUNIT, merged_junit(document))


def merged_junit(document: dict[str, Any]) -> str:
    """The deployments' JUnit reports as one, each deployment's suite named after it, so a CI
    server shows `prod: HEALTH-001 ...` and `staging: HEALTH-001 ...` apart."""
    root = ElementTree.Element("testsuites", name="opsbook fleet")
    for run in document["run"]["deployments"]:
        path = Path(run["folder"]) / JUNIT
        try:
            tree = ElementTree.parse(path)  # noqa: S314 (our own children's files)
        except (OSError, ElementTree.ParseError):
            continue
        found = tree.getroot()
        for suite in [found] if found.tag == "testsuite" else list(found):
            for case in suite.iter("testcase"):
                case.set("classname", f"{run['deployment']}.{case.get('classname', '')}")
            root.append(suite)
    return ElementTree.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def grid_lines(document: dict[str, Any]) -> list[str]:
    """The fleet summary for the terminal: one line per deployment, worst first."""
    areas, grid = area_grid(document)
    width = max([len("deployment"), *(len(name) for name, _ in grid)])
    lines = [f"{'deployment':{width}}  " + " ".join(f"{a[:8]:8}" for a in areas)]
    for name, by_area in grid:
        cells = " ".join(f"{by_area.get(a, '-')[:8]:8}" for a in areas)
        lines.append(f"{name:{width}}  {cells}")
    return lines


def _write(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def point_latest(reports_dir: Path, folder: Path) -> None:
    temporary = reports_dir / f".latest.{folder.name}"
    temporary.symlink_to(folder.name)
    os.replace(temporary, reports_dir / "latest")


def _worst(outcomes: Iterable[str]) -> str:
    ranked = sorted(outcomes, key=lambda o: WORST_FIRST.index(o) if o in WORST_FIRST else 99)
    return ranked[0] if ranked else ""


def area_grid(document: dict[str, Any]) -> tuple[list[str], list[tuple[str, dict[str, str]]]]:
    """(areas, [(deployment, {area: worst outcome})]), the worst deployment first."""
    cells: dict[str, dict[str, list[str]]] = {}
    for run in document["run"].get("deployments", []):
        cells.setdefault(str(run["deployment"]), {})
    for row in document["findings"]:
        areas = [m for m in row.get("markers", []) if m in AREAS] or ["other"]
        for area in areas:
            cells.setdefault(row["deployment"], {}).setdefault(area, []).append(row["outcome"])
    areas = sorted({area for by_area in cells.values() for area in by_area})
    grid = [
        (name, {area: _worst(outcomes) for area, outcomes in by_area.items()})
        for name, by_area in cells.items()
    ]

    def rank(entry: tuple[str, dict[str, str]]) -> tuple[int, str]:
        worst = _worst(entry[1].values()) or "error"  # a deployment with no rows: it broke
        return WORST_FIRST.index(worst) if worst in WORST_FIRST else 99, entry[0]

    return areas, sorted(grid, key=rank)


def summary_page(document: dict[str, Any], folder: Path) -> str:
    """The fleet summary: deployments x areas, worst first, each linked to its own report."""
    areas, grid = area_grid(document)
    folders = {str(r["deployment"]): r.get("folder") for r in document["run"]["deployments"]}
    codes = {str(r["deployment"]): r.get("exit_code") for r in document["run"]["deployments"]}
    head = "".join(f"<th>{html.escape(a)}</th>" for a in areas)
    lines = []
    for name, by_area in grid:
        report = folders.get(name)
        link = html.escape(name)
        if report:
            relative = os.path.relpath(Path(report) / "report.html", folder)
            link = f'<a href="{html.escape(relative)}">{link}</a>'
        cells = "".join(
            f'<td class="{html.escape(by_area.get(a, ""))}">{html.escape(by_area.get(a, "-"))}</td>'
            for a in areas
        )
        lines.append(f"<tr><th>{link}</th><td>{codes.get(name)}</td>{cells}</tr>")
    run = document["run"]
    verdict = "OK" if run["exit_code"] == 0 else f"exit {run['exit_code']}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>opsbook fleet: {html.escape(verdict)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
td, th {{ padding: .3em .8em; text-align: left; border-bottom: 1px solid #ddd; }}
.error, .failed {{ background: #f8d0d0; }} .blocked {{ background: #f8e8c0; }}
.passed, .fixed {{ background: #d8f0d8; }}
</style></head><body>
<h1>Fleet of {len(grid)}: {html.escape(verdict)}</h1>
<p>Run {html.escape(str(run["run_id"]))}, finished {html.escape(str(run["finished"]))}.
Each cell is the worst outcome of the area's checks; the worst deployment comes first.</p>
<table><tr><th>deployment</th><th>exit</th>{head}</tr>
{"".join(lines)}
</table></body></html>
"""
