"""The deploy gates' probes on real local facts: a git working tree made for the test, and
reports folders as earlier runs leave them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from opsbook.errors import NotEvaluated
from opsbook.probes.release import tree_status
from opsbook.probes.runs import predeploy_runs, selected_predeploy


def test_tree_status_lists_what_is_not_committed(tmp_path: Path) -> None:
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "app.py").write_text("print('v1')\n")
    dirty = tree_status(tmp_path, timeout_s=30)
    assert (dirty.changed, dirty.changed_paths) == (["?? app.py"], ["app.py"])
    subprocess.run([*git, "add", "app.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "v1"], check=True)
    assert tree_status(tmp_path, timeout_s=30).changed == []


def test_a_folder_that_is_not_a_git_tree_is_not_evaluated(tmp_path: Path) -> None:
    with pytest.raises(
        NotEvaluated, match=rf"repo {tmp_path}: git status failed: fatal: not a git"
    ):
        tree_status(tmp_path, timeout_s=30)


@pytest.mark.parametrize(
    ("selection", "predeploy"),
    [
        ("predeploy", True),
        ("daily or predeploy", True),
        ("(predeploy)", True),
        ("daily and not predeploy", False),
        ("postdeploy", False),
        (None, False),
    ],
)
def test_which_selections_are_predeploy_runs(selection: str | None, predeploy: bool) -> None:
    assert selected_predeploy(selection) is predeploy


def _run(reports: Path, run_id: str, started: str, selection: str) -> None:
    folder = reports / run_id
    folder.mkdir(parents=True)
    run = {"run_id": run_id, "started": started, "selection": selection}
    (folder / "findings.json").write_text(json.dumps({"run": run, "findings": []}))


def test_predeploy_runs_oldest_first_without_this_one(tmp_path: Path) -> None:
    _run(tmp_path, "b", "2026-12-01T02:00:00", "predeploy")
    _run(tmp_path, "a", "2026-12-01T01:00:00", "predeploy")
    _run(tmp_path, "daily", "2026-12-01T01:30:00", "daily")
    _run(tmp_path, "now", "2026-12-01T03:00:00", "predeploy")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "findings.json").write_text("{not json")
    (tmp_path / "latest").symlink_to(tmp_path / "now")
    found = predeploy_runs(tmp_path, excluding="now")
    assert [d["run"]["run_id"] for d in found] == ["a", "b"]
    assert predeploy_runs(tmp_path / "missing", excluding=None) == []
