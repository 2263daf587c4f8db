"""Run-over-run history from the report folders: what newly fails, what recovered, what flaps,
and how measured values trend.

Runs are compared only with earlier runs of the same selection (`-m daily` with `-m daily`),
read from their findings.json; nothing else is stored.
"""

from __future__ import annotations

import functools
import itertools
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
from msgspec import Struct, field

BAD = {"failed", "error"}
KEEP_RUNS = 20
FLAP_CHANGES = 3  # outcome changes within the kept runs that make a check flap

Key = tuple[str, str | None]


def _key(row: dict[str, Any]) -> Key:
    return (row["check_id"], row["target"])


class KeptRun(NamedTuple):
    """A finished run's folder (its name under the reports folder) and its findings.json."""

    folder: str
    document: dict[str, Any]


@functools.lru_cache(maxsize=4)  # a run reads them twice: its changes, then its status page
def kept_runs(reports_dir: Path, selection: str | None, before: str) -> list[KeptRun]:
    """Runs with the same selection that started before `before` (an ISO time), oldest first,
    at most KEEP_RUNS; each run's folder is never removed (it is the audit trail), only no
    longer read. (The list is shared by its callers: read it, do not change it.)"""
    runs: list[KeptRun] = []
    # Newest folders first (their names start with the time), and only as many as are kept:
    # a cron job's reports folder grows by thousands of runs.
    for folder in sorted(reports_dir.iterdir(), key=lambda p: p.name, reverse=True):
        if len(runs) > KEEP_RUNS:
            break
        if folder.name.startswith(".") or folder.is_symlink() or not folder.is_dir():
            continue
        try:
            document = msgspec.json.decode((folder / "findings.json").read_bytes())
        except (OSError, msgspec.DecodeError):
            continue  # a folder that is not a finished run
        run = document.get("run", {}) if isinstance(document, dict) else {}
        if run.get("selection") == selection and str(run.get("started", "")) < before:
            runs.append(KeptRun(folder.name, document))
    runs.sort(key=lambda kept: str(kept.document["run"]["started"]))
    return runs[-KEEP_RUNS:]


def earlier_runs(reports_dir: Path, selection: str | None, before: str) -> list[dict[str, Any]]:
    """findings.json of runs with the same selection that started before `before` (an ISO
    time), oldest first, at most KEEP_RUNS."""
    return [kept.document for kept in kept_runs(reports_dir, selection, before)]


def _number(value: object) -> float | None:
    try:
        number = float(str(value))
    except (TypeError, ValueError):
        return None
    return number if number == number else None  # NaN is no measurement


class Changes(Struct):
    """What changed since the previous run, and the history behind it."""

    previous_run: str | None = None
    newly_failing: list[Key] = field(default_factory=list)
    recovered: list[Key] = field(default_factory=list)
    flapping: list[Key] = field(default_factory=list)
    trends: dict[Key, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        def names(keys: list[Key]) -> list[str]:
            return [f"{check}[{target}]" if target else check for check, target in keys]

        return {
            "previous_run": self.previous_run,
            "newly_failing": names(self.newly_failing),
            "recovered": names(self.recovered),
            "flapping": names(self.flapping),
            "trends": dict(zip(names(list(self.trends)), self.trends.values(), strict=True)),
        }


def compare(rows: list[dict[str, Any]], earlier: list[dict[str, Any]]) -> Changes:
    """Changes of the current rows against the earlier runs (oldest first)."""
    changes = Changes()
    if not earlier:
        return changes
    previous = {_key(r): r["outcome"] for r in earlier[-1]["findings"]}
    changes.previous_run = earlier[-1]["run"].get("run_id")
    # Each earlier run indexed once: (failed?, observed) by key.
    indexed = [
        {_key(r): (r["outcome"] in BAD, r.get("observed")) for r in run["findings"]}
        for run in earlier
    ]
    for row in rows:
        key, now = _key(row), row["outcome"]
        before = previous.get(key)
        if now in BAD and before is not None and before not in BAD:
            changes.newly_failing.append(key)
        # Recovered: it passes again by itself. A check fixed in this run failed in it, and a
        # waived one still fails: neither is called recovered.
        if now == "passed" and before in BAD:
            changes.recovered.append(key)
        seen = [run[key] for run in indexed if key in run]
        series = [failed for failed, _ in seen] + [now in BAD]
        if sum(a != b for a, b in itertools.pairwise(series)) >= FLAP_CHANGES:
            changes.flapping.append(key)
        values = [_number(observed) for _, observed in seen]
        trend = [v for v in [*values, _number(row.get("observed"))] if v is not None]
        if len(trend) >= 2:
            changes.trends[key] = trend
    return changes


def sparkline(values: list[float], width: int = 120, height: int = 24) -> str:
    """A small inline SVG line of the values (self-contained: no script, no external file)."""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    step = width / max(1, len(values) - 1)
    points = " ".join(
        f"{i * step:.1f},{height - 2 - (v - low) / span * (height - 4):.1f}"
        for i, v in enumerate(values)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="trend from {low:g} to {high:g}">'
        f'<polyline fill="none" stroke="#36c" stroke-width="1.5" points="{points}"/></svg>'
    )
