"""junit.xml as CI shows it: test cases named by check id, target and title, a suite per run.

GitLab and Jenkins list a test case by its name and group it by its classname, so a check's
id, target and title are its name and its area its classname:

    <testsuite name="opsbook sandbox -m daily" ...>
      <testcase classname="health" name="HEALTH-001 [backend] Backend answers /health with 200">
        <failure message="[CRITICAL] backend: GET /health: 503 (expected 200)">...

The file is pytest's own (junitxml); this module only names what it writes, through the
`LogXML` object junitxml keeps in the config's stash. A check that could not be evaluated is an
`<error>`, also when its target was lost during the check's call (pytest would write a
`<failure>`). A person's own `junit_suite_name` ini wins over the suite's name.

An outcome settled once every check has run (opsbook.plugin.dependencies: under pytest-xdist
the controller finds a failure blocked by its cause, applies the fixes owed and checks again
what a fixed cause blocked; in one process, a re-check at the end) is written as settled: the
test case's verdict element, the suite's counts and the properties follow findings.json's row,
not the first report of the check.

`--junit-strict` leaves out the per-test-case `<properties>` (check id, severity, risk,
observed, evidence...), which the common JUnit schema does not allow (junit-10.xsd, the one
pytest's xunit2 family follows, kept in tests/data/): the check's metadata then travels in the
test case's name and in the text of its failure, error or skip.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree as ET

import pytest

# junitxml's own: its escaping (XML-invalid characters made visible), and its stash key. pytest
# is pinned below 10 in pyproject.toml.
from _pytest.junitxml import bin_xml_escape, xml_key

from opsbook.outcome import Outcome
from opsbook.pages import present
from opsbook.plugin.keys import EVIDENCE_PREFIX, FINDINGS, INVENTORY, FindingRow, Prop

if TYPE_CHECKING:
    from _pytest.junitxml import LogXML

DEFAULT_SUITE_NAME = "pytest"  # junitxml's default for the junit_suite_name ini
VERDICTS = ("failure", "error")
# Each outcome's element in a test case (none: a passed test case), as docs/contracts.md says.
ELEMENTS: dict[Outcome, str | None] = {
    Outcome.PASSED: None,
    Outcome.FIXED: None,
    Outcome.FAILED: "failure",
    Outcome.NOT_EVALUATED: "error",
    Outcome.BLOCKED: "skipped",
    Outcome.WAIVED: "skipped",
    Outcome.NOT_APPLICABLE: "skipped",
}
# junitxml's counts of the suite, by element (a test case without one is passed).
COUNTED = {None: "passed", "failure": "failure", "error": "error", "skipped": "skipped"}
# What --junit-strict writes into a failure's or error's text, in this order, for the
# properties it leaves out.
STRICT_DETAILS = (
    ("severity", Prop.SEVERITY),
    ("risk", Prop.RISK),
    ("observed", Prop.OBSERVED),
    ("expected", Prop.EXPECTED),
    ("deployment", Prop.DEPLOYMENT),
    ("waiver", Prop.WAIVER),
    ("remediation", Prop.REMEDIATION),
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("opsbook").addoption(
        "--junit-strict",
        action="store_true",
        help="junit.xml without per-test-case <properties>, valid against the common JUnit "
        "schema; the check's metadata is in each test case's name and failure text",
    )


def suite_name(config: pytest.Config) -> str:
    """`opsbook sandbox -m daily`: the inventory, and what chose the checks."""
    inventory = config.stash.get(INVENTORY, None)
    parts = ["opsbook"]
    if inventory is not None:
        parts.append(inventory.name)
    if config.option.markexpr:
        parts.append(f"-m {config.option.markexpr}")
    if config.option.keyword:
        parts.append(f"-k {config.option.keyword}")
    checks = [part.strip() for given in config.getoption("check") for part in given.split(",")]
    if any(checks):
        parts.append(f"--check={','.join(c for c in checks if c)}")
    return " ".join(parts)


def testcase_name(properties: dict[str, Any]) -> str:
    """`HEALTH-001 [backend] Backend answers /health with 200`; no brackets without a target."""
    target = properties.get(Prop.TARGET)
    where = f" [{target}]" if target else ""
    return f"{properties[Prop.CHECK_ID]}{where} {properties.get(Prop.TITLE, '')}".rstrip()


def area_of(properties: dict[str, Any]) -> str:
    """The check's area marker (`health`, `queue`...), else its id's prefix in lower case."""
    markers = str(properties.get(Prop.MARKERS, "")).split(",")
    return present.area_of(markers, str(properties[Prop.CHECK_ID]))


def _shown(properties: dict[str, Any], key: str) -> str:
    """A property as a person reads it, as every page shows values (a number with its unit,
    `93.5 %`; a structure as `path=/srv/.env, mode=0644`)."""
    unit = properties.get(Prop.UNIT) if key == Prop.OBSERVED else None
    return present.shown(properties[key], unit)


def _log_xml(config: pytest.Config) -> LogXML | None:
    return config.stash.get(xml_key, None)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    # trylast: junitxml makes its LogXML in its own pytest_configure, after the reports
    # plugin has chosen the file's path.
    xml = _log_xml(config)
    if xml is None:
        return
    if config.getini("junit_suite_name") == DEFAULT_SUITE_NAME:
        xml.suite_name = suite_name(config)
    strict = bool(config.getoption("junit_strict"))
    if strict:
        # xunit1 adds file and line attributes, which the schema does not allow either.
        xml.family = "xunit2"
    config.pluginmanager.register(_Naming(config, xml, strict), "opsbook-junit")


@dataclass
class _Written:
    """A check's test case as written at its teardown: its element, the properties of its
    report, and its row's outcome and message then."""

    element: ET.Element
    properties: dict[str, Any]
    outcome: Outcome
    message: str


class _Naming:
    """Names each check's test case and settles its verdict element as junitxml writes it, and
    again once the run has settled every outcome."""

    def __init__(self, config: pytest.Config, xml: LogXML, strict: bool) -> None:
        self.config = config
        self.xml = xml
        self.strict = strict
        self.written: dict[str, _Written] = {}

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> Generator[None, None, None]:
        properties: dict[str, Any] = dict(report.user_properties)
        if Prop.CHECK_ID not in properties:
            return (yield)
        opened = len(self.xml.node_reporters_ordered)
        # The check's test case, as junitxml opens it (the same reporter for each phase).
        reporter = self.xml.node_reporter(report)
        known = {id(node) for node in reporter.nodes}
        result = yield
        if report.when != "teardown":
            self._name(reporter.attrs, properties)
            added = [node for node in reporter.nodes if id(node) not in known]
            if report.when == "call" and report.failed and Prop.UNREACHABLE in properties:
                self._could_not_evaluate(added)
            for node in added:
                if node.tag in VERDICTS:
                    self._verdict(node, _line(report), properties)
            return result
        # At the teardown junitxml writes the test case's element and forgets the reporter;
        # a teardown error after a failed call opens a second element for the same check.
        for written in dict.fromkeys([reporter, *self.xml.node_reporters_ordered[opened:]]):
            element = written.to_xml()  # once written, the same element every time
            self._name(element.attrib, properties)
            if self.strict:
                for node in element.findall("properties"):
                    element.remove(node)
            for node in element.iter("property"):
                # junitxml writes str(value): a structure would be a Python repr, not JSON.
                value = properties.get(node.get("name", ""))
                if value is not None and not isinstance(value, str):
                    node.set("value", bin_xml_escape(json.dumps(value, default=str)))
            for node in element:
                if node.tag in VERDICTS and id(node) not in known:
                    self._verdict(node, _line(report), properties)
        row = self._row(report.nodeid)
        if row is not None and report.nodeid not in self.written:
            self.written[report.nodeid] = _Written(
                reporter.to_xml(), properties, row.outcome, row.message
            )
        return result

    def _row(self, nodeid: str) -> FindingRow | None:
        findings = self.config.stash.get(FINDINGS, None)
        return findings.rows.get(nodeid) if findings is not None else None

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self) -> None:
        """Before junitxml writes the file: each test case whose outcome was settled after it
        was written (blocked, fixed, or checked again) says the settled one."""
        for nodeid, written in self.written.items():
            row = self._row(nodeid)
            if row is not None and (row.outcome, row.message) != (written.outcome, written.message):
                self._settle(written, row)

    def _settle(self, written: _Written, row: FindingRow) -> None:
        element = written.element
        old = next((node for node in element if node.tag in ELEMENTS.values()), None)
        tag = ELEMENTS.get(row.outcome)
        settled = _settled_properties(row)
        properties = {**written.properties, **settled}
        if not self.strict:
            _set_properties(element, settled)
        for node in [node for node in element if node.tag in ELEMENTS.values()]:
            element.remove(node)
        self.xml.stats[COUNTED[old.tag if old is not None else None]] -= 1
        self.xml.stats[COUNTED[tag]] += 1
        written.outcome, written.message = row.outcome, row.message
        if tag is None:
            return
        node = ET.Element(tag)
        if tag == "skipped":
            # As junitxml writes a skip; a blocked check's message names its cause.
            node.set("type", "pytest.skip")
            node.set("message", bin_xml_escape(row.message))
            node.text = bin_xml_escape(row.message)
        else:
            node.text = bin_xml_escape(row.message)
            self._verdict(node, row.message, properties)
        first = 1 if len(element) and element[0].tag == "properties" else 0
        element.insert(first, node)

    @staticmethod
    def _name(attrs: dict[str, str], properties: dict[str, Any]) -> None:
        attrs["name"] = bin_xml_escape(testcase_name(properties))
        attrs["classname"] = bin_xml_escape(area_of(properties))

    def _could_not_evaluate(self, added: list[ET.Element]) -> None:
        # junitxml wrote a <failure> for a failed call: the check could not be evaluated.
        for node in added:
            if node.tag == "failure":
                node.tag = "error"
                self.xml.stats["failure"] -= 1
                self.xml.stats["error"] += 1

    def _verdict(self, node: ET.Element, line: str, properties: dict[str, Any]) -> None:
        """The message says the severity and the one line; --junit-strict adds the metadata
        that the left-out properties carried to the element's text."""
        severity = str(properties.get(Prop.SEVERITY, "")).upper()
        node.set("message", bin_xml_escape(f"[{severity}] {line}" if severity else line))
        if not self.strict:
            return
        details = [
            f"{label}: {_shown(properties, key)}"
            for label, key in STRICT_DETAILS
            if properties.get(key) not in (None, "")
        ]
        details.extend(
            f"evidence {name.removeprefix(EVIDENCE_PREFIX)}:\n{value}"
            for name, value in properties.items()
            if name.startswith(EVIDENCE_PREFIX)
        )
        node.text = bin_xml_escape("\n".join([node.text or "", "", *details]).strip("\n"))


def _line(report: pytest.TestReport) -> str:
    """The first line of what the report says went wrong."""
    return next((x.strip() for x in str(report.longrepr).splitlines() if x.strip()), "")


def _settled_properties(row: FindingRow) -> dict[str, str]:
    """What settling the row added to what its report said: the cause that blocks it, what
    the fix applied by the run's end did."""
    settled: dict[str, str] = {Prop.BLOCKED_BY: row.blocked_by or ""}
    attempt = row.remediation_attempt
    if attempt is not None:
        settled |= {
            Prop.REMEDIATION_STATUS: attempt.status,
            Prop.REMEDIATION_VERDICT: attempt.verdict or "",
            Prop.REMEDIATION_REASON: attempt.reason or "",
            Prop.REMEDIATION_PLAN: "\n".join(attempt.plan),
            Prop.BEFORE: attempt.before or "",
            Prop.AFTER: attempt.after or "",
        }
    return settled


def _set_properties(element: ET.Element, properties: dict[str, str]) -> None:
    """The test case's <property> elements hold these values (an empty one is not added)."""
    node = element.find("properties")
    if node is None:
        node = ET.Element("properties")
        element.insert(0, node)
    known = {p.get("name"): p for p in node.findall("property")}
    for name, value in properties.items():
        if name in known:
            known[name].set("value", bin_xml_escape(value))
        elif value:
            ET.SubElement(node, "property", name=str(name), value=bin_xml_escape(value))
