"""Which runs are post-deploy gates (they wait for services still starting): decided from the
selected checks' markers, never from a substring of the -m expression."""

from __future__ import annotations

import pytest

CHECKS = '''
import pytest
from opsbook import Severity, check

@pytest.mark.daily
@pytest.mark.postdeploy
@check("GATE-001", Severity.HIGH)
def test_both():
    """Daily and post-deploy."""

@pytest.mark.daily
@check("GATE-002", Severity.HIGH)
def test_daily():
    """Daily only."""

@pytest.mark.postdeploy
@check("GATE-003", Severity.HIGH)
def test_gate():
    """Post-deploy only."""
'''

RECORD = """
pytest_plugins = ["opsbook.plugin", "opsbook.fixtures.targets"]

def pytest_collection_finish(session):
    from opsbook.fixtures.targets import _is_postdeploy_gate
    (session.config.rootpath / "gate.txt").write_text(
        str(_is_postdeploy_gate(session.config, session.items))
    )
"""


@pytest.mark.parametrize(
    ("args", "gate"),
    [
        (["-m", "postdeploy"], True),
        (["-m", "postdeploy and not daily"], True),
        (["-m", "daily"], False),
        (["-m", "daily and not postdeploy"], False),
        (["-m", "daily or postdeploy"], False),
        (["--check=GATE-001"], False),
        ([], False),
    ],
)
def test_a_run_is_a_gate_when_minus_m_chose_its_checks_for_postdeploy(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, args: list[str], gate: bool
) -> None:
    pytester.makeini("[pytest]\naddopts = --strict-markers -p no:cacheprovider\n")
    pytester.makeconftest(RECORD)
    (pytester.path / "inventory.yaml").write_text("name: gate\n")
    monkeypatch.setenv("OPSBOOK_INVENTORY", str(pytester.path / "inventory.yaml"))
    pytester.makepyfile(test_gate=CHECKS)
    pytester.runpytest("--collect-only", *args)
    assert (pytester.path / "gate.txt").read_text() == str(gate)
