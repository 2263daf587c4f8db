"""Reports and the audit log are readable by their owner and the reports group, never by all.

Real runs (pytester, the checks of test_findings_schema) under the usual umask 022, which would
leave every file world-readable; the group is one the runner is not in by default (we run as
root, who may give files to any group).
"""

from __future__ import annotations

import grp
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_findings_schema import mixed_suite

from opsbook.remediate.audit import AuditLog
from opsbook.report_files import make_folder


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.fixture
def other_group() -> grp.struct_group:
    """A group that is not the runner's own."""
    return next(g for g in grp.getgrall() if g.gr_gid != os.getegid())


def modes(folder: Path) -> dict[str, tuple[int, int]]:
    """(mode, group) of the folder and of everything in it but symbolic links, by path."""
    found = {".": folder.lstat()}
    for path in folder.rglob("*"):
        if not path.is_symlink():
            found[str(path.relative_to(folder))] = path.lstat()
    return {name: (stat.S_IMODE(info.st_mode), info.st_gid) for name, info in found.items()}


def test_report_files_are_0640_and_folders_0750_in_the_reports_group(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, other_group: grp.struct_group
) -> None:
    suite = mixed_suite(pytester, monkeypatch)
    reports = suite.path / "reports"
    reports.mkdir()
    # An audit log from before: world-readable, in the runner's group.
    (reports / "audit.log").write_text("")
    (reports / "audit.log").chmod(0o644)
    result = suite.runpytest("-m", "daily", f"--reports-group={other_group.gr_name}")
    assert result.ret == 1
    gid = other_group.gr_gid
    found = modes(reports)
    run = (reports / "latest").resolve().name
    assert {f"{run}/junit.xml", f"{run}/report.html", f"{run}/findings.json"} <= set(found)
    for name, (mode, group) in found.items():
        folder = (reports / name).is_dir()
        assert (mode, group) == ((0o750 if folder else 0o640), gid), name


def test_the_reports_group_is_the_runners_own_by_default(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite = mixed_suite(pytester, monkeypatch)
    suite.runpytest("-m", "daily")
    found = modes(suite.path / "reports")
    assert {group for _, group in found.values()} == {os.getegid()}
    assert not [name for name, (mode, _) in found.items() if mode & stat.S_IRWXO]


def test_an_unknown_reports_group_is_a_usage_error_in_one_line(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite = mixed_suite(pytester, monkeypatch)
    result = suite.runpytest_subprocess("-m", "daily", "--reports-group=no-such-group-x")
    assert result.ret == 4
    lines = [line for line in result.stderr.lines if line.strip()]
    assert lines == ["ERROR: --reports-group: no such group: no-such-group-x"]
    assert not (suite.path / "reports").exists()


def test_a_new_audit_log_takes_the_reports_group_and_is_0640(
    tmp_path: Path, other_group: grp.struct_group
) -> None:
    reports = tmp_path / "reports"
    make_folder(reports, other_group.gr_gid)
    log = AuditLog(reports / "audit.log", key=b"test key")
    log.append({"check": "DEMO-001", "verdict": "FIXED"})
    log.append({"check": "DEMO-002", "verdict": "FIXED"})
    info = log.path.stat()
    assert (stat.S_IMODE(info.st_mode), info.st_gid) == (0o640, other_group.gr_gid)
    assert (stat.S_IMODE(reports.stat().st_mode), reports.stat().st_gid) == (
        0o750,
        other_group.gr_gid,
    )
    assert [entry["seq"] for entry in log.entries()] == [1, 2]
