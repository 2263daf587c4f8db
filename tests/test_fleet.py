"""A fleet's rules that need no running deployment: which files are inventories, names, shards,
and the merge of findings (the runs themselves: tests/test_fleet_sandboxes.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from test_findings_schema import validator

from opsbook import fleet
from opsbook.outcome import Outcome
from opsbook.plugin.keys import FindingRow

INVENTORY = "name: {name}\nhttp:\n  backend: {{url: 'http://127.0.0.1:9/'}}\n"


def write_inventory(folder: Path, name: str, file: str | None = None) -> Path:
    path = folder / (file or f"{name}.yaml")
    path.write_text(INVENTORY.format(name=name))
    return path


def test_only_inventories_count_in_an_inventory_folder(tmp_path: Path) -> None:
    east = write_inventory(tmp_path, "east")
    west = write_inventory(tmp_path, "west", "west.yml")
    (tmp_path / "waivers.yaml").write_text("name: w\nwaivers: []\nhttp: {}\n")
    (tmp_path / "redis.password").write_text("s3cret\n")
    (tmp_path / "README.md").write_text("# inventories\n")
    (tmp_path / "notes.yaml").write_text("name: notes\ntodo: [a, b]\n")  # no targets
    (tmp_path / "broken.yaml").write_text("name: [\n")
    write_inventory(tmp_path, "hidden", ".hidden.yaml")
    (tmp_path / "sub").mkdir()
    write_inventory(tmp_path / "sub", "nested")  # folders are not searched
    assert fleet.inventory_files([tmp_path]) == [east, west]


def test_a_folder_without_inventories_is_refused(tmp_path: Path) -> None:
    (tmp_path / "waivers.yaml").write_text("waivers: []\n")
    with pytest.raises(fleet.FleetError, match="no inventory file in it"):
        fleet.inventory_files([tmp_path])


def test_two_inventories_of_one_deployment_are_refused(tmp_path: Path) -> None:
    write_inventory(tmp_path, "prod", "a.yaml")
    write_inventory(tmp_path, "prod", "b.yaml")
    with pytest.raises(fleet.FleetError, match="'prod' is named by two inventories"):
        fleet.deployments([tmp_path], None)


@pytest.mark.parametrize("text", ["", "1", "0/2", "3/2", "a/b", "1/0"])
def test_a_bad_shard_is_one_line(text: str) -> None:
    with pytest.raises(fleet.FleetError, match="--shard"):
        fleet.parse_shard(text)


def test_adding_a_deployment_moves_only_that_one() -> None:
    names = [f"tenant-{i}" for i in range(40)]
    before = {name: fleet.shard_of(name, 4) for name in names}
    after = {name: fleet.shard_of(name, 4) for name in [*names, "tenant-new"]}
    assert all(after[name] == shard for name, shard in before.items())
    assert set(before.values()) == {1, 2, 3, 4}  # and the shards are all used


def test_the_fleet_options_are_refused_cleanly(tmp_path: Path) -> None:
    """Bad fleet input is one line and pytest's usage exit code (4), never a traceback."""
    write_inventory(tmp_path, "prod", "a.yaml")
    write_inventory(tmp_path, "prod", "b.yaml")
    for args in ([f"--inventory={tmp_path}"], ["--shard=5/2", f"--inventory={tmp_path}/a.yaml"]):
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
            cwd=Path(fleet.__file__).parents[1],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 4, done.stdout + done.stderr
        assert "Traceback" not in done.stdout + done.stderr
        assert "ERROR: " in done.stderr


def run_folder(folder: Path, deployment: str, outcomes: dict[str, str], exit_code: int) -> Path:
    """A run folder as a deployment's own run leaves it (findings.json and junit.xml)."""
    folder.mkdir(parents=True)
    rows = [
        msgspec.to_builtins(
            FindingRow(
                check_id=check_id,
                title="The service answers on its health path.",
                target=None,
                markers=["daily", "health"],
                severity="high",
                nodeid=f"checks/test_health.py::test_{check_id}",
                outcome=Outcome(outcome),
                message="",
                deployment=deployment,
            )
        )
        for check_id, outcome in outcomes.items()
    ]
    counts: dict[str, int] = {}
    for outcome in outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    document = {
        "schema_version": 1,
        "run": {
            "run_id": "0badcafe",
            "started": "2026-12-01T00:00:00+00:00",
            "finished": "2026-12-01T00:00:01+00:00",
            "duration_s": 1.0,
            "inventory": deployment,
            "inventory_path": f"/etc/opsbook/{deployment}.yaml",
            "rootdir": "/opt/opsbook",
            "selection": "daily",
            "exit_code": exit_code,
            "counts": counts,
            "audit_head": None,
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
    (folder / "findings.json").write_text(json.dumps(document))
    (folder / "junit.xml").write_text(
        '<testsuites><testsuite name="opsbook" tests="1"><testcase classname="health" '
        'name="HEALTH-001" /></testsuite></testsuites>'
    )
    return folder


def test_merged_findings_keep_every_row_and_the_worst_exit(tmp_path: Path) -> None:
    prod = run_folder(tmp_path / "prod", "prod", {"HEALTH-001": "failed"}, 1)
    staging = run_folder(tmp_path / "staging", "staging", {"HEALTH-001": "error"}, 10)
    document = fleet.merge_folders([prod, staging])
    validator().validate(document)
    assert [(r["deployment"], r["outcome"]) for r in document["findings"]] == [
        ("prod", "failed"),
        ("staging", "error"),
    ]
    assert document["run"]["exit_code"] == 10  # unreachable outranks failed: docs/fleet.md
    assert document["run"]["counts"] == {"failed": 1, "error": 1}
    # Merging merged folders (the shards of a fleet) keeps the deployments as they were.
    fleet.write_merged(tmp_path / "shard", document)
    again = fleet.merge_folders([tmp_path / "shard"])
    assert again["run"]["deployments"] == document["run"]["deployments"]
    page = (tmp_path / "shard" / "status.html").read_text()
    assert "prod" in page  # every deployment on the one page
    assert "staging" in page
    junit = (tmp_path / "shard" / "junit.xml").read_text()
    assert 'classname="prod.health"' in junit
    assert 'classname="staging.health"' in junit


def test_the_summary_puts_the_worst_deployment_first(tmp_path: Path) -> None:
    ok = run_folder(tmp_path / "a-ok", "a-ok", {"HEALTH-001": "passed"}, 0)
    bad = run_folder(tmp_path / "z-bad", "z-bad", {"HEALTH-001": "error"}, 10)
    document = fleet.merge_folders([ok, bad])
    lines = fleet.grid_lines(document)
    assert lines[1].split()[:2] == ["z-bad", "error"]
    assert lines[2].split()[:2] == ["a-ok", "passed"]
    page = fleet.summary_page(document, tmp_path)
    assert page.index("z-bad") < page.index("a-ok")
    assert 'href="z-bad/report.html"' in page


def test_a_run_that_left_no_findings_is_not_ok(tmp_path: Path) -> None:
    ok = run_folder(tmp_path / "ok", "ok", {"HEALTH-001": "passed"}, 0)
    (tmp_path / "broke").mkdir()
    document = fleet.merge_folders([ok, tmp_path / "broke"])
    assert document["run"]["exit_code"] == 3
    known = fleet.merge_folders([ok, tmp_path / "broke"], exit_codes={tmp_path / "broke": 4})
    assert known["run"]["exit_code"] == 4


def test_merge_command_refuses_a_folder_without_findings(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "opsbook", "merge", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"opsbook merge: {tmp_path}: no findings.json (not a run folder)"
