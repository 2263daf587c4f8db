"""findings.json follows the JSON Schema shipped in opsbook/schema, and counts as the terminal does.

The documents validated are real: a pytester run of checks that pass, fail, lose their target
during the call, are not applicable, and are waived (the target is a closed loopback port).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import msgspec

# Imported here, before any pytester run, so that every in-process run finds the same module:
# pytester drops what a run imported, and a second import of psycopg raises its errors from the
# first one's classes, which the targets would then not recognise as "unreachable".
import psycopg  # noqa: F401
import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from opsbook.schema import SCHEMA_VERSION, findings_schema

MIXED_CHECKS = '''
import pytest
from opsbook import Severity, check
from opsbook.outcome import Unit

pytestmark = pytest.mark.daily

@pytest.mark.health
@check("MIX-001", Severity.HIGH)
def test_passes(finding):
    """Queue depth is within its limit."""
    finding.expect(3, "<= 5", ok=True, unit=Unit.COUNT)

@pytest.mark.resources
@check("MIX-002", Severity.CRITICAL)
def test_fails(finding):
    """Disk use is below the limit.

    Risk: writes fail when the disk is full.
    """
    finding.expect(93.5, "<= 80 %", ok=False, unit=Unit.PERCENT)

@pytest.mark.queue
@check("MIX-003", Severity.HIGH)
def test_loses_its_target(redis_target, finding):
    """The queue answers."""
    redis_target.client()  # the target is a closed port: unreachable during the call

@pytest.mark.database
@check("MIX-006", Severity.HIGH)
def test_cannot_reach_its_target(postgres):
    """The database answers."""  # the target is a closed port: unreachable in the setup

@pytest.mark.health
@check("MIX-004", Severity.LOW)
def test_not_applicable():
    """Nothing to compare here."""
    pytest.skip("the inventory asks for nothing")

@pytest.mark.security
@check("MIX-005", Severity.MEDIUM)
def test_waived(finding):
    """Secret files are private."""
    finding.expect({"path": "/srv/.env", "mode": "0644"}, "0600 or stricter", ok=False,
                   problem="/srv/.env has mode 0644")
'''

MIXED_WAIVERS = (
    "waivers:\n"
    "  - {check: MIX-005, owner: alice, reason: vault migration, ticket: OPS-1,"
    " expires: 2999-01-01}\n"
)

# pytest's words in its counts line, and the outcome findings.json gives the same checks.
TERMINAL_TO_OUTCOME = {
    "passed": "passed",
    "failed": "failed",
    "errors": "error",
    "skipped": "skipped",
    "xfailed": "waived",
}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mixed_suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A checks suite of one pass, one failure, a target lost during the call and one not
    reached in the setup, one skip, one waiver."""
    pytester.makeini("[pytest]\naddopts = --strict-markers -p no:cacheprovider\n")
    pytester.makeconftest('pytest_plugins = ["opsbook.plugin", "opsbook.fixtures.targets"]\n')
    monkeypatch.delenv("OPSBOOK_INVENTORY", raising=False)
    monkeypatch.delenv("OPSBOOK_SANDBOX_DIR", raising=False)
    inventory = pytester.path / "inventory.yaml"
    port = closed_port()
    inventory.write_text(
        f'name: mixed\nredis:\n  queue: {{url: "redis://127.0.0.1:{port}/0"}}\n'
        f"postgres:\n  chatdb: {{port: {port}, password: {{env: MIXED_PASSWORD}}}}\n"
    )
    monkeypatch.setenv("MIXED_PASSWORD", "not-used")
    (pytester.path / "waivers.yaml").write_text(MIXED_WAIVERS)
    monkeypatch.setenv("OPSBOOK_INVENTORY", str(inventory))
    pytester.makepyfile(test_mixed=MIXED_CHECKS)
    return pytester


def run_folder(pytester: pytest.Pytester) -> Path:
    return (pytester.path / "reports" / "latest").resolve()


@pytest.fixture
def mixed_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> tuple[pytest.RunResult, dict[str, Any]]:
    suite = mixed_suite(pytester, monkeypatch)
    result = suite.runpytest("-m", "daily")
    document = json.loads((run_folder(suite) / "findings.json").read_text())
    return result, document


def validator() -> Draft202012Validator:
    schema = findings_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def test_a_real_findings_json_validates_against_the_shipped_schema(
    mixed_run: tuple[pytest.RunResult, dict[str, Any]],
) -> None:
    _, document = mixed_run
    validator().validate(document)
    assert document["schema_version"] == SCHEMA_VERSION == 1
    rows = {row["check_id"]: row for row in document["findings"]}
    assert {check_id: row["outcome"] for check_id, row in rows.items()} == {
        "MIX-001": "passed",
        "MIX-002": "failed",
        "MIX-003": "error",
        "MIX-004": "skipped",
        "MIX-005": "waived",
        "MIX-006": "error",
    }
    # Typed values: a number stays a number with its unit beside it, a structure an object.
    assert (rows["MIX-001"]["observed"], rows["MIX-001"]["unit"]) == (3, "count")
    assert (rows["MIX-002"]["observed"], rows["MIX-002"]["unit"]) == (93.5, "%")
    assert rows["MIX-005"]["observed"] == {"path": "/srv/.env", "mode": "0644"}
    assert rows["MIX-003"]["unreachable"] is True
    assert rows["MIX-003"]["message"].startswith("unreachable: redis queue (")
    assert rows["MIX-006"]["message"].startswith("unreachable: postgres chatdb (")


def test_the_run_counts_as_the_terminal_counts(
    mixed_run: tuple[pytest.RunResult, dict[str, Any]],
) -> None:
    """An unreachable target is an ERROR in pytest's counts line too, never FAILED."""
    result, document = mixed_run
    assert result.ret == 1
    outcomes = result.parseoutcomes()
    outcomes.pop("warnings", None)  # opsbook.plugin imported by another test: not a check
    terminal = {TERMINAL_TO_OUTCOME[word]: n for word, n in outcomes.items()}
    assert terminal == document["run"]["counts"]
    assert terminal == {"passed": 1, "failed": 1, "error": 2, "skipped": 1, "waived": 1}
    result.stdout.fnmatch_lines(["ERROR test_mixed.py::test_loses_its_target*unreachable: redis*"])
    assert "FAILED test_mixed.py::test_loses_its_target" not in result.stdout.str()


def test_the_schema_describes_every_field_of_a_row() -> None:
    """A field added to FindingRow is added to the schema too (and the schema says which)."""
    # Imported here: a test module that imports the plugin makes the pytester runs warn.
    from opsbook.plugin.keys import FindingRow

    row = findings_schema()["$defs"]["finding"]
    fields = {f.encode_name for f in msgspec.structs.fields(FindingRow)}
    assert set(row["required"]) == fields
    assert set(row["properties"]) == fields


@pytest.mark.parametrize(
    ("path", "value"),
    [
        pytest.param(("schema_version",), 2, id="other-version"),
        pytest.param(("findings", 0, "outcome"), "FAILED", id="pytest-word-as-outcome"),
        pytest.param(("findings", 0, "unit"), "percent", id="unknown-unit"),
        pytest.param(("findings", 0, "duration_s"), "0.1", id="number-as-string"),
        pytest.param(("run", "counts", "xfailed"), 1, id="count-of-no-outcome"),
    ],
)
def test_the_schema_refuses_a_document_that_breaks_the_contract(
    mixed_run: tuple[pytest.RunResult, dict[str, Any]], path: tuple[str | int, ...], value: object
) -> None:
    _, document = mixed_run
    where: Any = document
    for key in path[:-1]:
        where = where[key]
    where[path[-1]] = value
    with pytest.raises(ValidationError):
        validator().validate(document)


def test_the_run_says_who_and_what_produced_it(
    mixed_run: tuple[pytest.RunResult, dict[str, Any]],
) -> None:
    """An auditor's page rendered from findings.json alone can name the opsbook version and
    commit, the operator and the inventory it read."""
    import hashlib

    from opsbook import version
    from opsbook.pages import status_page

    _, document = mixed_run
    made = document["run"]["provenance"]
    assert made["opsbook_version"] == version.version()
    assert made["commit"] == version.commit()
    assert "@" in made["operator"]
    inventory = Path(document["run"]["inventory_path"])
    assert made["inventory_sha256"] == hashlib.sha256(inventory.read_bytes()).hexdigest()
    page = status_page.render(document)
    assert f"run by {made['operator']}" in page
    assert made["inventory_sha256"] in page
