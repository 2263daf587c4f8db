"""junit.xml names checks as CI shows them, and --junit-strict validates against junit-10.xsd.

Real runs (pytester) of the checks in test_findings_schema: a pass, a failure, a target lost
during the call, a skip and a waiver. The schema is the common JUnit XSD, kept in tests/data.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree
from support import RunChecks
from test_findings_schema import mixed_suite, run_folder
from test_html_report import blocking_suite, healing_suite

from opsbook.sandbox.stack import Stack

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


def junit_of(suite: pytest.Pytester) -> etree._ElementTree:
    return etree.parse(run_folder(suite) / "junit.xml")


def properties_of(case: etree._Element) -> dict[str, str]:
    return {p.get("name"): p.get("value") for p in case.iter("property")}


def test_under_xdist_a_fix_the_controller_applies_is_a_passed_test_case(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With -n 2 the workers report MIX-007 failed; the controller applies its fix, checks it
    again and it passes: junit.xml says so, not the worker's failure."""
    suite = healing_suite(pytester, monkeypatch)
    result = suite.runpytest("-n", "2", "-m", "daily", "--remediate=apply")
    assert result.ret == 1, result.stdout.str()
    document = junit_of(suite)
    (testsuite,) = document.iter("testsuite")
    assert (testsuite.get("tests"), testsuite.get("failures"), testsuite.get("errors")) == (
        "7", "1", "2",
    )  # fmt: skip
    fixed = cases(document)["MIX-007"]
    assert [node.tag for node in fixed] == ["properties"], etree.tostring(fixed)
    properties = properties_of(fixed)
    assert properties["remediation_status"] == "applied"
    assert properties["remediation_verdict"] == "FIXED"
    assert properties["before"].startswith("mixed: no flag file")


def test_under_xdist_a_blocked_check_is_a_skip_that_names_its_cause(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With -n 2 a worker reports the backend's check failed; the controller finds it blocked
    by Redis, which another worker could not reach: a <skipped> naming redis, not a failure."""
    suite = blocking_suite(pytester, monkeypatch)
    suite.makeconftest('pytest_plugins = ["opsbook.plugin", "opsbook.fixtures.targets"]\n')
    assert suite.runpytest("-n", "2", "-m", "daily", "--junit-strict").ret == 10
    document = junit_of(suite)
    etree.XMLSchema(etree.parse(XSD)).assertValid(document)
    (testsuite,) = document.iter("testsuite")
    assert (testsuite.get("failures"), testsuite.get("errors"), testsuite.get("skipped")) == (
        "0", "1", "1",
    )  # fmt: skip
    by_id = cases(document)
    assert by_id["BLK-002"].find("failure") is None
    (skipped,) = by_id["BLK-002"].iter("skipped")
    assert skipped.get("message").startswith("blocked by redis: backend: GET /health answered 503")
    assert by_id["BLK-001"].find("error") is not None


DEPENDENT_FIX = '''
from pathlib import Path

from opsbook.remediate.context import Context
from opsbook.remediate.plan import Plan, StepKind

UP = Path(__file__).with_name("backend-up")


def start_backend(ctx: Context, *, apply: bool) -> Plan:
    """Start the demo's backend (its flag file).

    Changes: creates a file beside the checks.
    Privileges: write access to that folder.
    Undo: delete the file.
    """
    plan = Plan.for_fix(ctx)
    if UP.exists():
        return plan.nothing("the backend is up")
    plan.add("start the backend", f"touch {UP}", StepKind.SCALE, UP.touch)
    return plan.finish(apply, ctx.gate)
'''

DEPENDENT_CHECKS = '''
import pytest
from opsbook import Severity, check
from dependent_fix import UP, start_backend

pytestmark = [pytest.mark.daily, pytest.mark.health]

@check("DEP-001", Severity.CRITICAL, remediation=start_backend)
def test_backend(http_service, finding):
    """The backend answers."""
    finding.expect("up" if UP.exists() else "down", "up", ok=UP.exists())

@check("DEP-002", Severity.HIGH)
def test_frontend(prometheus, finding):
    """The frontend serves the backend's answers."""
    finding.expect("up" if UP.exists() else "502", "up", ok=UP.exists())
'''


def test_under_xdist_a_check_blocked_by_a_fixed_cause_is_written_as_checked_again(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """-n 2 --remediate=apply: the workers report both checks failed; the controller finds the
    frontend's blocked by the backend, fixes the backend, checks the frontend again, and it
    passes. junit.xml has two passed test cases, the backend's with its fix's verdict."""
    from test_findings_schema import closed_port

    pytester.makeini("[pytest]\naddopts = --strict-markers -p no:cacheprovider\n")
    pytester.makeconftest('pytest_plugins = ["opsbook.plugin", "opsbook.fixtures.targets"]\n')
    port = closed_port()
    inventory = pytester.path / "inventory.yaml"
    inventory.write_text(
        "name: dependent\nhttp:\n"
        f'  backend: {{kind: backend, url: "http://127.0.0.1:{port}"}}\n'
        f'  frontend: {{kind: prometheus, url: "http://127.0.0.1:{port}"}}\n'
        "services:\n  backend: {targets: [backend], role: api}\n"
        "  frontend: {targets: [frontend], depends_on: [backend], role: frontend}\n"
    )
    monkeypatch.setenv("OPSBOOK_INVENTORY", str(inventory))
    monkeypatch.setenv("OPSBOOK_HOME", str(pytester.path))
    pytester.makepyfile(dependent_fix=DEPENDENT_FIX, test_dependent=DEPENDENT_CHECKS)
    monkeypatch.syspath_prepend(str(pytester.path))
    result = pytester.runpytest("-n", "2", "-m", "daily", "--remediate=apply")
    output = result.stdout.str()
    assert result.ret == 0, output
    assert "opsbook re-check: DEP-002 frontend: PASSED" in output
    document = junit_of(pytester)
    (testsuite,) = document.iter("testsuite")
    assert (testsuite.get("tests"), testsuite.get("failures"), testsuite.get("skipped")) == (
        "2", "0", "0",
    )  # fmt: skip
    by_id = cases(document)
    assert [node.tag for node in by_id["DEP-002"]] == ["properties"]
    assert properties_of(by_id["DEP-002"]).get("blocked_by", "") == ""
    assert [node.tag for node in by_id["DEP-001"]] == ["properties"]
    assert properties_of(by_id["DEP-001"])["remediation_verdict"] == "FIXED"


def test_with_redis_stopped_under_xdist_junit_agrees_with_findings_json(
    breakable_sandbox: Stack, run_checks: RunChecks, tmp_path: Path
) -> None:
    """The real sandbox, Redis stopped, `-n 2 --remediate=apply`: the controller restarts Redis
    and checks again what it blocked. Every test case of junit.xml says its check's settled
    outcome, as findings.json does: Redis's ping and the backend's health are passed test
    cases, not the workers' failure and skip."""
    from test_cause_first import own_state

    reports = tmp_path / "reports"
    breakable_sandbox.stop("redis")
    run = run_checks(
        "-n", "2", "--remediate=apply", "--allow=restart", reports=reports,
        inventory=own_state(breakable_sandbox, tmp_path),
    )  # fmt: skip
    assert run.outcome("QUEUE-001", "queue") == "fixed", run.output
    assert run.outcome("HEALTH-001", "backend") == "passed", run.output
    document = etree.parse(reports / "latest" / "junit.xml")
    shown = {}
    for case in document.iter("testcase"):
        tags = [node.tag for node in case if node.tag in ("failure", "error", "skipped")]
        shown[case.get("name").split(" [")[0].split()[0], case.get("name")] = tags
    for row in run.rows:
        name = next(n for (check, n) in shown if check == row["check_id"]
                    and (row["target"] is None or f"[{row['target']}]" in n))  # fmt: skip
        expected = ELEMENT_OF[row["outcome"]]
        assert shown[row["check_id"], name] == expected, (row["outcome"], name)
    (queue,) = [c for c in document.iter("testcase") if c.get("name").startswith("QUEUE-001 ")]
    assert properties_of(queue)["remediation_verdict"] == "FIXED"
    (testsuite,) = document.iter("testsuite")
    counts = run.document["run"]["counts"]
    assert int(testsuite.get("failures")) == counts.get("failed", 0)
    assert int(testsuite.get("errors")) == counts.get("error", 0)


ELEMENT_OF = {
    "passed": [], "fixed": [], "failed": ["failure"], "error": ["error"],
    "blocked": ["skipped"], "waived": ["skipped"], "skipped": ["skipped"],
}  # fmt: skip
