"""Earlier runs of the checks, as their reports folders hold them (findings.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def selected_predeploy(selection: object) -> bool:
    """Whether a run's `-m` expression selected the predeploy checks (`not predeploy` did not)."""
    words = str(selection or "").replace("(", " ").replace(")", " ").split()
    return any(w == "predeploy" and (i == 0 or words[i - 1] != "not") for i, w in enumerate(words))


def earlier_runs(reports: Path) -> list[dict[str, Any]]:
    """Every run's findings.json document in `reports`, oldest first; unreadable ones skipped."""
    found: list[dict[str, Any]] = []
    if not reports.is_dir():
        return found
    for folder in reports.iterdir():
        if folder.name.startswith(".") or folder.is_symlink() or not folder.is_dir():
            continue
        try:
            found.append(json.loads((folder / "findings.json").read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return sorted(found, key=lambda document: str(document["run"].get("started", "")))


def predeploy_runs(reports: Path, *, excluding: str | None) -> list[dict[str, Any]]:
    """The runs in `reports` that selected the predeploy checks, oldest first, without the run
    `excluding` names (this one)."""
    return [
        d for d in earlier_runs(reports) if selected_predeploy(d["run"].get("selection"))
        and d["run"].get("run_id") != excluding
    ]  # fmt: skip
