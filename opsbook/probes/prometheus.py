"""Prometheus's facts: its scrape targets, the rules it loaded, the series it has, and the
rules files (what the repository ships, what Prometheus names, what promtool says of them).

A Prometheus API answer other than "success" is a fact that could not be read: NotEvaluated.
"""

from __future__ import annotations

import glob
import re
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from msgspec import Struct
from msgspec.structs import replace

from opsbook import yamltext
from opsbook.errors import NotEvaluated
from opsbook.targets import HttpTarget


def _api(target: HttpTarget, path: str, params: dict[str, str] | None = None) -> Any:
    answer = target.get(path, params=params)
    try:
        document = answer.json()
    except ValueError:
        document = None
    if not isinstance(document, dict) or document.get("status") != "success":
        shown = answer.text[:200] if document is None else document
        raise NotEvaluated(
            f"prometheus {target.name}: GET {path} answered {answer.status_code}: {shown}"
        )
    return document["data"]


class ScrapeTarget(Struct, frozen=True):
    job: str
    instance: str
    up: str  # the value of `up`: "1" is up
    # Why Prometheus's last scrape of a target that is down failed ("connection refused").
    error: str = ""

    @property
    def name(self) -> str:
        return f"{self.job}/{self.instance}"

    def describe(self) -> str:
        return f"{self.name} ({self.error})" if self.error else self.name


# How often the targets are asked again while waiting for Prometheus's next scrape.
SCRAPE_POLL_S = 0.25


def scrape_targets(target: HttpTarget, *, next_scrape_within_s: float = 0.0) -> list[ScrapeTarget]:
    """Every series of `up`: one per scrape target, a target that is down with the error of
    its last scrape.

    Prometheus's view is up to one scrape interval old: a service restarted since its last
    scrape is up, and Prometheus still says down. So a target seen down is looked at again
    after Prometheus's next scrape of it, when that is due within `next_scrape_within_s`
    (on Prometheus's own clock, so the runner's clock does not matter)."""
    seen, now = _up(target)
    if all(t.up == "1" for t in seen):
        return seen
    try:
        scrapes = last_scrapes(target)
    except NotEvaluated:
        return seen  # a Prometheus-compatible server without /api/v1/targets: `up` alone
    due = {
        name: scrape
        for name, scrape in scrapes.items()
        if any(t.name == name and t.up != "1" for t in seen)
        and scrape.next_in(now) <= next_scrape_within_s
    }
    if due:
        deadline = time.monotonic() + next_scrape_within_s
        while due and time.monotonic() < deadline:
            time.sleep(SCRAPE_POLL_S)
            scrapes = last_scrapes(target)
            due = {n: s for n, s in due.items() if n in scrapes and scrapes[n].at == s.at}
        seen, _ = _up(target)
    return [
        t if t.up == "1" or t.name not in scrapes else replace(t, error=scrapes[t.name].reason)
        for t in seen
    ]


def _up(target: HttpTarget) -> tuple[list[ScrapeTarget], float]:
    """The `up` series, and the moment Prometheus evaluated them (its clock, Unix seconds)."""
    series = _api(target, "/api/v1/query", {"query": "up"})["result"]
    targets = [
        ScrapeTarget(
            s["metric"].get("job", "?"), s["metric"].get("instance", "?"), str(s["value"][1])
        )
        for s in series
    ]
    return targets, float(series[0]["value"][0]) if series else 0.0


class LastScrape(Struct, frozen=True):
    """Prometheus's last scrape of one target (GET /api/v1/targets)."""

    at: str  # RFC 3339 on Prometheus's clock, as Prometheus wrote it
    error: str
    interval_s: float | None  # None: a Prometheus too old to say (before 2.33)

    @property
    def reason(self) -> str:
        # A request that failed names the URL first, then a chain of causes: `Get "http://…
        # /metrics": dial tcp …: connect: connection refused`; its last cause is what an
        # operator acts on. Any other error (an HTTP status, a parse error) is read whole.
        if self.error.startswith('Get "'):
            return self.error.rsplit(": ", 1)[-1].strip()
        return self.error.strip()[:200]

    def next_in(self, now: float) -> float:
        """Seconds from `now` to the next scrape (infinite when that cannot be known)."""
        try:
            last = datetime.fromisoformat(self.at).timestamp()
        except ValueError:
            return float("inf")
        if self.interval_s is None or last <= 0:
            return float("inf")
        return last + self.interval_s - now


def last_scrapes(target: HttpTarget) -> dict[str, LastScrape]:
    """Each active scrape target's last scrape, by "job/instance"."""
    active = _api(target, "/api/v1/targets", {"state": "active"})["activeTargets"]
    return {
        f"{t['labels'].get('job', '?')}/{t['labels'].get('instance', '?')}": LastScrape(
            str(t.get("lastScrape", "")),
            str(t.get("lastError", "")),
            duration_s(str(t.get("scrapeInterval", ""))),
        )
        for t in active
    }


_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_DURATION_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800,
                    "y": 31536000}  # fmt: skip


def duration_s(text: str) -> float | None:
    """A Prometheus duration ("15s", "1m30s", "500ms") in seconds; None if it is not one."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(int(n) * _DURATION_UNIT_S[u] for n, u in parts)


class Rule(Struct, frozen=True):
    name: str
    type: str  # "alerting" or "recording"
    query: str


class RuleGroup(Struct, frozen=True):
    name: str
    rules: tuple[Rule, ...]


def rule_groups(target: HttpTarget) -> list[RuleGroup]:
    """The rule groups the running Prometheus evaluates."""
    groups = _api(target, "/api/v1/rules")["groups"]
    return [
        RuleGroup(
            group["name"],
            tuple(
                Rule(str(rule["name"]), str(rule.get("type", "")), str(rule.get("query", "")))
                for rule in group.get("rules") or []
            ),
        )
        for group in groups
    ]


def metrics_with_series(target: HttpTarget, names: set[str]) -> set[str]:
    """Which of these metric names have at least one series now."""
    if not names:
        return set()
    pattern = "|".join(re.escape(name) for name in sorted(names))
    query = f'group by (__name__) ({{__name__=~"{pattern}"}})'
    series = _api(target, "/api/v1/query", {"query": query})["result"]
    return {s["metric"]["__name__"] for s in series}


def metrics_after_next_scrapes(
    target: HttpTarget, names: set[str], *, next_scrape_within_s: float
) -> tuple[set[str], list[ScrapeTarget]]:
    """Which of these metric names have series, and the scrape targets, once Prometheus has
    scraped again the targets it saw down, when that is due within `next_scrape_within_s`.

    A target that is down takes its series with it, and one started since its last scrape
    brings them back only on its next scrape (scrape_targets)."""
    targets = scrape_targets(target, next_scrape_within_s=next_scrape_within_s)
    return metrics_with_series(target, names), targets


class RuleFiles(Struct, frozen=True):
    """The rules files the running Prometheus names, as found on this host, and the globs that
    matched nothing here (a Prometheus on another host, or a relative path)."""

    found: tuple[Path, ...]
    unseen: tuple[str, ...]


def rule_files(target: HttpTarget) -> RuleFiles:
    config = yamltext.safe_load(_api(target, "/api/v1/status/config")["yaml"]) or {}
    found: list[Path] = []
    unseen: list[str] = []
    for pattern in config.get("rule_files") or []:
        matches = sorted(glob.glob(pattern)) if Path(pattern).is_absolute() else []
        found.extend(Path(match) for match in matches)
        if not matches:
            unseen.append(pattern)
    return RuleFiles(tuple(found), tuple(unseen))


class RulesLoaded(Struct, frozen=True):
    """The shipped rules against what the running Prometheus evaluates (ALERT-002's fact)."""

    shipped: dict[str, list[str]]
    loaded: dict[str, list[str]]
    # "group NAME" for a group not loaded at all, "GROUP/RULE" for a rule missing from one.
    missing: list[str]

    @property
    def total(self) -> int:
        return sum(len(set(names)) for names in self.shipped.values())


def rules_loaded(target: HttpTarget, directory: Path) -> RulesLoaded:
    """Which shipped rule groups and rules (the *.yml of `directory`) Prometheus does not
    evaluate: the check and its fix (a reload) compare the same way."""
    shipped = shipped_rules(directory)
    loaded = {
        group.name: sorted({rule.name for rule in group.rules}) for group in rule_groups(target)
    }
    missing = [f"group {group}" for group in shipped if group not in loaded]
    missing += [
        f"{group}/{name}"
        for group, names in shipped.items()
        if group in loaded
        for name in dict.fromkeys(names)
        if name not in loaded[group]
    ]
    return RulesLoaded(shipped, loaded, missing)


def shipped_rules(directory: Path) -> dict[str, list[str]]:
    """The rule names of each group in the rules files (*.yml) of a directory."""
    groups: dict[str, list[str]] = {}
    for path in sorted(directory.glob("*.yml")):
        document = yamltext.safe_load(path.read_text(encoding="utf-8")) or {}
        for group in document.get("groups") or []:
            names = groups.setdefault(group["name"], [])
            names.extend(
                str(rule.get("alert") or rule.get("record")) for rule in group.get("rules") or []
            )
    return groups


class PromtoolVerdict(Struct, frozen=True):
    """`promtool check rules FILE`: whether it passed, its output, and its first error."""

    path: Path
    valid: bool
    output: str
    error: str = ""


def promtool_check_rules(promtool: str, path: Path, timeout_s: float) -> PromtoolVerdict:
    try:
        done = subprocess.run(
            [promtool, "check", "rules", str(path)],
            capture_output=True, text=True, timeout=timeout_s, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise NotEvaluated(
            f"promtool check rules {path}: no answer within {timeout_s:g} s"
        ) from None
    output = f"$ promtool check rules {path}\n{done.stdout}{done.stderr}"
    if done.returncode == 0:
        return PromtoolVerdict(path, True, output)
    errors = [
        line.strip()
        for line in done.stderr.splitlines()
        if line.strip() and line.strip() != "FAILED:"
    ]
    return PromtoolVerdict(
        path, False, output, next(iter(dict.fromkeys(errors)), f"{path}: promtool failed")
    )


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


def absence_watched(expression: str) -> set[str]:
    """The metric names whose absence an expression watches (absent(...), absent_over_time)."""
    return set(_ABSENT.findall(expression))


class MetricUses(Struct, frozen=True):
    """Which rules use each metric, and which alert watches a metric's absence."""

    rules: dict[str, set[str]]  # metric name -> the rules whose expression selects it
    absence_alerts: dict[str, str]  # metric name -> the alert that fires while it is absent


def metric_uses(groups: list[RuleGroup]) -> MetricUses:
    rules: dict[str, set[str]] = {}
    absence_alerts: dict[str, str] = {}
    for group in groups:
        for rule in group.rules:
            for name in metric_names(rule.query):
                rules.setdefault(name, set()).add(rule.name)
            if rule.type == "alerting":
                absence_alerts.update(dict.fromkeys(absence_watched(rule.query), rule.name))
    return MetricUses(rules, absence_alerts)
