"""junit.xml names checks as CI shows them, and --junit-strict validates against junit-10.xsd.

Real runs (pytester) of the checks in test_findings_schema: a pass, a failure, a target lost
during the call, a skip and a waiver. The schema is the common JUnit XSD, kept in tests/data.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree
from test_findings_schema import mixed_suite, run_folder

XSD = Path(__file__).parent / "data" / "junit-10.xsd"


def junit(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *args: str
) -> etree._ElementTree:
    suite = mixed_suite(pytester, monkeypatch)
    result = suite.runpytest("-m", "daily", *args)
    assert result.ret == 1, result.stdout.str()
    return etree.parse(run_folder(suite) / "junit.xml")


def cases(document: etree._ElementTree) -> dict[str, etree._Element]:
    return {case.get("name").split()[0]: case for case in document.iter("testcase")}


def test_suite_and_test_cases_are_named_by_inventory_selection_check_and_target(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    document = junit(pytester, monkeypatch)
    (suite,) = document.iter("testsuite")
    assert suite.get("name") == "opsbook mixed -m daily"
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("6", "1", "2")
    assert suite.get("skipped") == "2"  # not applicable, and waived
    by_id = cases(document)
    assert {i: (c.get("classname"), c.get("name")) for i, c in by_id.items()} == {
        "MIX-001": ("health", "MIX-001 Queue depth is within its limit."),
        "MIX-002": ("resources", "MIX-002 Disk use is below the limit."),
        "MIX-003": ("queue", "MIX-003 [queue] The queue answers."),
        "MIX-004": ("health", "MIX-004 Nothing to compare here."),
        "MIX-005": ("security", "MIX-005 Secret files are private."),
        "MIX-006": ("database", "MIX-006 [chatdb] The database answers."),
    }
    (failure,) = by_id["MIX-002"].iter("failure")
    assert failure.get("message") == "[CRITICAL] mixed: 93.5 % (expected <= 80 %)"
    # The target was lost during the call: could not evaluate, an <error>, not a <failure>.
    assert by_id["MIX-003"].find("failure") is None
    (error,) = by_id["MIX-003"].iter("error")
    assert error.get("message").startswith("[HIGH] unreachable: redis queue (127.0.0.1:")
    (error,) = by_id["MIX-006"].iter("error")  # in the setup: junitxml's own <error>
    assert error.get("message").startswith("[HIGH] unreachable: postgres chatdb (127.0.0.1:")
    (waived,) = by_id["MIX-005"].iter("skipped")
    assert waived.get("message") == "waived: alice, OPS-1, until 2999-01-01: vault migration"
    (skipped,) = by_id["MIX-004"].iter("skipped")
    assert skipped.get("message") == "the inventory asks for nothing"
    # Without --junit-strict each test case carries the check's properties.
    properties = {p.get("name"): p.get("value") for p in by_id["MIX-002"].iter("property")}
    assert properties["check_id"] == "MIX-002"
    assert properties["severity"] == "critical"
    # Structures as JSON, not as Python's repr.
    waived_properties = {p.get("name"): p.get("value") for p in by_id["MIX-005"].iter("property")}
    assert waived_properties["observed"] == '{"path": "/srv/.env", "mode": "0644"}'


def test_strict_junit_validates_against_the_common_schema(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = etree.XMLSchema(etree.parse(XSD))
    document = junit(pytester, monkeypatch, "--junit-strict")
    schema.assertValid(document)
    assert not list(document.iter("property"))
    by_id = cases(document)
    (failure,) = by_id["MIX-002"].iter("failure")
    assert failure.get("message") == "[CRITICAL] mixed: 93.5 % (expected <= 80 %)"
    # The metadata the properties carried travels in the failure's text.
    assert failure.text.splitlines() == [
        "mixed: 93.5 % (expected <= 80 %)",
        "",
        "severity: critical",
        "risk: writes fail when the disk is full.",
        "observed: 93.5 %",
        "expected: <= 80 %",
        "deployment: mixed",
    ]
    (error,) = by_id["MIX-003"].iter("error")
    assert "severity: high" in error.text


def test_properties_per_test_case_are_what_the_common_schema_refuses(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The schema is not lax: the default junit.xml (with properties) does not validate."""
    schema = etree.XMLSchema(etree.parse(XSD))
    document = junit(pytester, monkeypatch)
    assert not schema.validate(document)
    assert "properties" in str(schema.error_log.last_error)


def test_a_suite_name_of_ones_own_wins(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    document = junit(pytester, monkeypatch, "-o", "junit_suite_name=nightly")
    (suite,) = document.iter("testsuite")
    assert suite.get("name") == "nightly"


def test_names_hold_when_pytest_xdist_runs_the_checks_in_workers(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    document = junit(pytester, monkeypatch, "-n", "2", "--junit-strict")
    etree.XMLSchema(etree.parse(XSD)).assertValid(document)
    by_id = cases(document)
    assert by_id["MIX-003"].get("name") == "MIX-003 [queue] The queue answers."
    assert by_id["MIX-003"].find("error") is not None
