"""The shipped alert rules read from their files, and their series on a live Prometheus: shared
by tests/test_alert_rules.py (the native sandbox) and tests/test_compose_stack.py (compose)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import requests
import yaml

from opsbook.locations import PACKAGE
from opsbook.probes.prometheus import metric_names

RULES = PACKAGE / "alerts"
TIMEOUT_S = 3


def rules_files() -> list[Path]:
    return sorted(RULES.glob("*.yml"))


def rules(kind: str) -> dict[str, list[dict[str, Any]]]:
    """The rules of this kind ("alert" or "record") of every shipped file, by name."""
    found: dict[str, list[dict[str, Any]]] = {}
    for path in rules_files():
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if kind in rule:
                    found.setdefault(rule[kind], []).append(rule)
    return found


_SELECTOR = r"(?<![\w:]){name}(\{{[^}}]*\}})?"


def selectors() -> dict[str, set[str]]:
    """Every vector selector of the shipped rules (its matchers included), with its rules."""
    found: dict[str, set[str]] = {}
    for kind in ("alert", "record"):
        for name, each in rules(kind).items():
            for rule in each:
                expression = re.sub(r"\s+", " ", rule["expr"])
                for metric in metric_names(expression):
                    pattern = _SELECTOR.format(name=re.escape(metric))
                    for match in re.finditer(pattern, expression):
                        found.setdefault(match[0], set()).add(name)
    return found


def series(prometheus_url: str, selector: str) -> list[dict[str, str]]:
    answer = requests.get(
        f"{prometheus_url}/api/v1/series", params={"match[]": selector}, timeout=TIMEOUT_S
    )
    answer.raise_for_status()
    result: list[dict[str, str]] = answer.json()["data"]
    return result


def missing_series(prometheus_url: str) -> list[str]:
    """The selectors of the shipped rules without any series in this Prometheus, each with
    the rules that use it."""
    return [
        f"{selector} (used by {', '.join(sorted(names))})"
        for selector, names in sorted(selectors().items())
        if not series(prometheus_url, selector)
    ]


def jobs_without_memory_limit(prometheus_url: str) -> set[str]:
    """Jobs that export a memory series and have no job:memory_limit_bytes: HighMemoryUsage
    would never compare them with anything."""
    jobs = {s["job"] for s in series(prometheus_url, "process_resident_memory_bytes")}
    limited = {s["job"] for s in series(prometheus_url, "job:memory_limit_bytes")}
    return jobs - limited


def alert_states(prometheus_url: str, name: str) -> set[str]:
    answer = requests.get(f"{prometheus_url}/api/v1/alerts", timeout=TIMEOUT_S)
    answer.raise_for_status()
    alerts = answer.json()["data"]["alerts"]
    return {a["state"] for a in alerts if a["labels"]["alertname"] == name}
