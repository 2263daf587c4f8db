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

`--junit-strict` leaves out the per-test-case `<properties>` (check id, severity, risk,
observed, evidence...), which the common JUnit schema does not allow (junit-10.xsd, the one
pytest's xunit2 family follows, kept in tests/data/): the check's metadata then travels in the
test case's name and in the text of its failure, error or skip.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree as ET

import pytest

# junitxml's own: its escaping (XML-invalid characters made visible), and its stash key. pytest
# is pinned below 10 in pyproject.toml.
from _pytest.junitxml import bin_xml_escape, xml_key

from opsbook.check import AREAS
from opsbook.outcome import Unit
from opsbook.plugin.keys import EVIDENCE_PREFIX, INVENTORY, Prop

if TYPE_CHECKING:
    from _pytest.junitxml import LogXML

DEFAULT_SUITE_NAME = "pytest"  # junitxml's default for the junit_suite_name ini
VERDICTS = ("failure", "error")
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
    area = next((m for m in markers if m in AREAS), None)
    return area or str(properties[Prop.CHECK_ID]).rsplit("-", 1)[0].lower()


def _shown(properties: dict[str, Any], key: str) -> str:
    """A property as text: a number with its unit (`93.5 %`), a structure as JSON."""
    value = properties[key]
    unit = properties.get(Prop.UNIT)
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if key == Prop.OBSERVED and unit in set(Unit) and number:
        return Unit(unit).show(value)
    return value if isinstance(value, str) else json.dumps(value, default=str)


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
    config.pluginmanager.register(_Naming(xml, strict), "opsbook-junit")


class _Naming:
    """Names each check's test case and settles its verdict element as junitxml writes it."""

    def __init__(self, xml: LogXML, strict: bool) -> None:
        self.xml = xml
        self.strict = strict

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
                    self._verdict(node, report, properties)
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
                    self._verdict(node, report, properties)
        return result

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

    def _verdict(
        self, node: ET.Element, report: pytest.TestReport, properties: dict[str, Any]
    ) -> None:
        """The message says the severity and the one line; --junit-strict adds the metadata
        that the left-out properties carried to the element's text."""
        line = next((x.strip() for x in str(report.longrepr).splitlines() if x.strip()), "")
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
