"""A fleet of real sandboxes: every deployment checked, one hung deployment delays nobody, the
whole-run bound when all hang, and shards merged equal one unsharded run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from test_findings_schema import validator

from opsbook import fleet
from opsbook.sandbox.stack import Stack

pytestmark = pytest.mark.sandbox

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 3.0  # the inventories' thresholds.timeout_s (the default)
# Two names that fall into different shards of 2, so that each shard has one deployment.
NAMES = next(
    (a, b)
    for a in ("east", "north", "alpha")
    for b in ("west", "south", "beta")
    if fleet.shard_of(a, 2) != fleet.shard_of(b, 2)
)


@pytest.fixture(scope="module")
def inventories() -> Iterator[Path]:
    """A folder holding the inventories of two running sandboxes (and a waivers file, which
    is not an inventory)."""
    base = Path(tempfile.mkdtemp(prefix="opsbook-fleet-"))
    base.chmod(0o755)  # PostgreSQL runs as its own OS user, which must reach the stacks
    stacks = [Stack(base / name, name) for name in NAMES]
    folder = base / "inventories"
    folder.mkdir()
    try:
        for stack in stacks:
            stack.up()
            shutil.copy(stack.inventory_path, folder / f"{stack.name}.yaml")
        (folder / "waivers.yaml").write_text("waivers: []\n")
        yield folder
    finally:
        for stack in stacks:
            stack.down()
        shutil.rmtree(base, ignore_errors=True)


def stack_of(inventories: Path, name: str) -> Stack:
    return Stack(inventories.parent / name, name)


@contextmanager
def frozen(*stacks: Stack) -> Iterator[None]:
    """Every process of the stacks stopped (SIGSTOP): they accept connections, never answer."""
    pids = [pid for stack in stacks for pid in stack.processes()]
    try:
        for pid in pids:
            # A child may end between the listing and the signal (a PostgreSQL backend).
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        yield
    finally:
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def run(*args: str, reports: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "daily", f"--reports-dir={reports}", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done, time.monotonic() - started


def merged(reports: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((reports / "latest" / "findings.json").read_text())
    return document


# OBS-004 judges the traffic of the last minutes, and each run's own requests (HEALTH-004's
# through the entry) are traffic for the next: its outcome depends on the runs before it.
HISTORY_DEPENDENT = {"OBS-004"}


def verdicts(document: dict[str, Any], deployment: str | None = None) -> set[tuple[Any, ...]]:
    return {
        (row["deployment"], row["check_id"], row["target"], row["outcome"])
        for row in document["findings"]
        if deployment in (None, row["deployment"]) and row["check_id"] not in HISTORY_DEPENDENT
    }


def test_a_fleet_run_checks_every_deployment(inventories: Path, tmp_path: Path) -> None:
    done, _ = run(f"--inventory={inventories}", reports=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    document = merged(tmp_path)
    validator().validate(document)
    assert {row["deployment"] for row in document["findings"]} == set(NAMES)
    assert {d["deployment"] for d in document["run"]["deployments"]} == set(NAMES)
    for deployment in document["run"]["deployments"]:
        assert (Path(deployment["folder"]) / "report.html").is_file()
        # No across-runs page of one run beside it: the fleet's pages link the run itself.
        assert not (Path(deployment["folder"]).parent / "status.html").exists()
    assert (tmp_path / "latest" / "summary.html").is_file()
    # Each deployment's own run keeps today's test ids: the merged JUnit tells them apart.
    junit = (tmp_path / "latest" / "junit.xml").read_text()
    assert all(f'classname="{name}.health"' in junit for name in NAMES)
    # The same fleet named file by file.
    files = [f"--inventory={inventories / f'{name}.yaml'}" for name in NAMES]
    again, _ = run(*files, reports=tmp_path / "again")
    assert again.returncode == 0, again.stdout + again.stderr
    assert verdicts(merged(tmp_path / "again")) == verdicts(document)


def test_one_hung_deployment_delays_nobody(inventories: Path, tmp_path: Path) -> None:
    healthy, hung = NAMES
    run(f"--inventory={inventories}", reports=tmp_path / "before")
    with frozen(stack_of(inventories, hung)):
        done, seconds = run(f"--inventory={inventories}", reports=tmp_path / "during")
    document = merged(tmp_path / "during")
    assert done.returncode != 0
    # The healthy deployment's verdicts are those of a run without the hung one...
    assert verdicts(document, healthy) == verdicts(merged(tmp_path / "before"), healthy)
    # ...and on time: its own run was not held up by the other's timeouts (generous margins).
    mine = next(d for d in document["run"]["deployments"] if d["deployment"] == healthy)
    own = json.loads((Path(mine["folder"]) / "findings.json").read_text())
    assert own["run"]["duration_s"] < TIMEOUT_S + 10, own["run"]
    assert seconds < TIMEOUT_S + 5 + 15, done.stdout
    outcomes = {row["outcome"] for row in document["findings"] if row["deployment"] == hung}
    assert "error" in outcomes, done.stdout


def test_every_deployment_hung_ends_within_the_bound(inventories: Path, tmp_path: Path) -> None:
    """The whole run ends within the per-check timeout plus 5 s (plus a generous margin for a
    loaded CI machine: this guards against a hang, it is not a speed test)."""
    with frozen(*(stack_of(inventories, name) for name in NAMES)):
        done, seconds = run(f"--inventory={inventories}", reports=tmp_path)
    # Nothing answers: a dead stack and a runner cut off from it look alike, so nothing is
    # judged FAILED (and restarted): every target could not be evaluated.
    assert done.returncode == 10, done.stdout
    assert seconds < TIMEOUT_S + 5 + 15, done.stdout
    document = merged(tmp_path)
    for deployment in document["run"]["deployments"]:
        own = json.loads((Path(deployment["folder"]) / "findings.json").read_text())
        assert own["run"]["duration_s"] < TIMEOUT_S + 5 + 10, own["run"]
    answered = [
        row
        for row in document["findings"]
        if row["check_id"] == "HEALTH-001" and row["target"] == "backend"
    ]
    assert len(answered) == len(NAMES)
    assert {row["outcome"] for row in answered} == {"error"}
    assert all("cut off" in row["message"] for row in answered), answered


def test_shards_merged_equal_one_unsharded_run(inventories: Path, tmp_path: Path) -> None:
    # Earlier tests froze the stacks: their logs may hold errors (LOG-001 fails), alike in
    # every run below.
    whole, _ = run(f"--inventory={inventories}", reports=tmp_path / "whole")
    assert whole.returncode in (0, 1), whole.stdout + whole.stderr
    shards = []
    for index in (1, 2):
        done, _ = run(
            f"--inventory={inventories}", f"--shard={index}/2", reports=tmp_path / f"s{index}"
        )
        assert done.returncode in (0, 1), done.stdout + done.stderr
        assert len(merged(tmp_path / f"s{index}")["run"]["deployments"]) == 1
        shards.append(str(tmp_path / f"s{index}"))
    merging = subprocess.run(
        [sys.executable, "-m", "opsbook", "merge", *shards, "--reports-dir", str(tmp_path / "m")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert merging.returncode == whole.returncode, merging.stdout + merging.stderr
    document = merged(tmp_path / "m")
    validator().validate(document)
    assert verdicts(document) == verdicts(merged(tmp_path / "whole"))
