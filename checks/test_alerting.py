"""Alerting: the runbook's alert rules are valid, loaded by Prometheus, and watch real series.

The rules ship in the repository (alerts/*.yml). Prometheus reads its own copies, named by the
`rule_files` globs of its configuration; a copy can differ from the repository's file, so the
checks look at both: the files' validity (promtool), and what the running Prometheus evaluates
(its rules API).
"""

from __future__ import annotations

import glob
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from opsbook import Severity, check, yamltext
from opsbook.targets import HttpTarget

pytestmark = [pytest.mark.observability]

SHIPPED_RULES = Path(__file__).resolve().parent.parent / "alerts"
PROMTOOL_TIMEOUT_S = 20

# PromQL words that look like metric names but are not: operators, modifiers and keywords.
_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "atan2", "inf", "nan", "start", "end",
}  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NAME = re.compile(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(\s*\()?")
_ABSENT = re.compile(r"\babsent(?:_over_time)?\s*\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)")


def metric_names(expression: str) -> set[str]:
    """The metric names an expression selects (not functions, labels, keywords or durations)."""
    text = _STRING.sub(" ", expression)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    return {
        name
        for name, call in _NAME.findall(text)
        if not call and name.lower() not in _KEYWORDS and not re.fullmatch(r"\d\w*", name)
    }


def _loaded_groups(prometheus: HttpTarget) -> list[dict[str, Any]]:
    answer = prometheus.get("/api/v1/rules").json()
    assert answer.get("status") == "success", (
        f"prometheus {prometheus.name}: GET /api/v1/rules failed: {answer}"
    )
    groups: list[dict[str, Any]] = answer["data"]["groups"]
    return groups


def _rule_name(rule: dict[str, Any]) -> str:
    return str(rule.get("alert") or rule.get("record") or rule.get("name"))


def _shipped_files() -> list[Path]:
    return sorted(SHIPPED_RULES.glob("*.yml"))


def _loaded_files(prometheus: HttpTarget) -> tuple[list[Path], list[str]]:
    """The rules files the running Prometheus names, as found on this host, and the globs that
    matched nothing here (a Prometheus on another host, or a relative path)."""
    answer = prometheus.get("/api/v1/status/config").json()
    config = yamltext.safe_load(answer["data"]["yaml"]) or {}
    found: list[Path] = []
    unseen: list[str] = []
    for pattern in config.get("rule_files") or []:
        matches = sorted(glob.glob(pattern)) if Path(pattern).is_absolute() else []
        found.extend(Path(match) for match in matches)
        if not matches:
            unseen.append(pattern)
    return found, unseen


# Not daily: the file changes with a deploy, and promtool costs more than the rest of a daily
# run together; the running Prometheus's own view of the rules is ALERT-002, daily.
@pytest.mark.predeploy
@pytest.mark.weekly
@check("ALERT-001", Severity.HIGH)
def test_rules_files_are_valid(prometheus: HttpTarget, finding) -> None:
    """The alert rules files are valid (promtool check rules).

    Risk: Prometheus refuses an invalid rules file: at a reload it keeps the old rules, at a
    restart it does not start at all; either way the alerts people rely on are not the ones
    written down.
    """
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed on this host: cannot validate the rules files")
    loaded, unseen = _loaded_files(prometheus)
    files = list(dict.fromkeys([*_shipped_files(), *loaded]))
    assert files, f"prometheus {prometheus.name}: no rules files (none shipped in {SHIPPED_RULES})"
    outputs, problems = [], []
    for path in files:
        done = subprocess.run(
            [promtool, "check", "rules", str(path)],
            capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT_S, check=False,
        )  # fmt: skip
        outputs.append(f"$ promtool check rules {path}\n{done.stdout}{done.stderr}")
        if done.returncode != 0:
            errors = [
                line.strip()
                for line in done.stderr.splitlines()
                if line.strip() and line.strip() != "FAILED:"
            ]
            problems.append(next(iter(dict.fromkeys(errors)), f"{path}: promtool failed"))
    finding.observe(f"{len(files) - len(problems)}/{len(files)} valid", expected="all valid")
    if unseen:
        finding.attach("rule_files not found on this host", unseen)
    finding.attach("promtool", "\n".join(outputs))
    assert not problems, f"prometheus {prometheus.name}: invalid rules: " + "; ".join(problems)


@pytest.mark.daily
@check("ALERT-002", Severity.HIGH)
def test_shipped_rules_are_loaded(prometheus: HttpTarget, finding) -> None:
    """The running Prometheus has loaded every rule group and rule of the shipped rules files.

    Risk: an alert that is written down but not loaded never fires; the outage it describes
    is found by users instead.
    """
    expected: dict[str, list[str]] = {}
    for path in _shipped_files():
        document = yamltext.safe_load(path.read_text(encoding="utf-8")) or {}
        for group in document.get("groups") or []:
            names = expected.setdefault(group["name"], [])
            names.extend(_rule_name(rule) for rule in group.get("rules") or [])
    assert expected, f"prometheus {prometheus.name}: no rules shipped in {SHIPPED_RULES}"
    loaded = {
        group["name"]: {_rule_name(rule) for rule in group["rules"]}
        for group in _loaded_groups(prometheus)
    }
    missing = []
    for group, names in expected.items():
        if group not in loaded:
            missing.append(f"group {group}")
            continue
        missing.extend(
            f"{group}/{name}" for name in dict.fromkeys(names) if name not in loaded[group]
        )
    total = sum(len(set(names)) for names in expected.values())
    finding.observe(
        missing or f"all {total} rules loaded",
        expected=f"all {total} rules of {len(expected)} group(s) loaded",
    )
    finding.attach("loaded", {group: sorted(names) for group, names in loaded.items()})
    assert not missing, (
        f"prometheus {prometheus.name}: not loaded: {', '.join(missing)} "
        f"(expected every rule of {SHIPPED_RULES}/*.yml)"
    )


@pytest.mark.daily
@check("ALERT-003", Severity.MEDIUM)
def test_alert_expressions_select_existing_series(prometheus: HttpTarget, finding) -> None:
    """Every metric the loaded alert rules use has series in Prometheus.

    Risk: an expression over a metric nobody exports (a renamed metric, a missing exporter, a
    typo) is never true: the alert looks armed and can never fire. A metric whose absence an
    alert watches (absent(...)) is reported by that alert and does not fail the check.
    """
    uses: dict[str, set[str]] = {}
    watched_absent: dict[str, str] = {}
    for group in _loaded_groups(prometheus):
        for rule in group["rules"]:
            for name in metric_names(rule["query"]):
                uses.setdefault(name, set()).add(rule["name"])
            if rule.get("type") == "alerting":
                for name in _ABSENT.findall(rule["query"]):
                    watched_absent[name] = rule["name"]
    assert uses, f"prometheus {prometheus.name}: no rules loaded"
    pattern = "|".join(re.escape(name) for name in sorted(uses))
    answer = prometheus.get(
        "/api/v1/query", params={"query": f'group by (__name__) ({{__name__=~"{pattern}"}})'}
    ).json()
    assert answer.get("status") == "success", (
        f"prometheus {prometheus.name}: series query failed: {answer}"
    )
    present = {series["metric"]["__name__"] for series in answer["data"]["result"]}
    absent = sorted(set(uses) - present)
    alerted = {name: watched_absent[name] for name in absent if name in watched_absent}
    missing = [name for name in absent if name not in alerted]
    finding.observe(
        f"{len(uses) - len(absent)} of {len(uses)} metrics have series",
        expected="every metric used has series",
    )
    finding.attach(
        "metrics",
        {
            name: {
                "rules": sorted(rules),
                "series": name in present
                or (f"none; its absence fires {alerted[name]}" if name in alerted else False),
            }
            for name, rules in sorted(uses.items())
        },
    )
    assert not missing, f"prometheus {prometheus.name}: no series for " + "; ".join(
        f"{name} (used by {', '.join(sorted(uses[name]))})" for name in missing
    )
