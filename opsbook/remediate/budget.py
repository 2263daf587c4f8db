"""Remediation budgets that persist across runs, with a brake only a person releases.

Each (kind, target) may be applied `count` times within `per_s` seconds. The first refusal
sets the brake: further attempts are refused, even after the window has passed, until a person
runs `python -m opsbook remediate --reset-budget` (Monit's "N restarts within M cycles, then
stop"). The state is a small JSON file, written atomically.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from opsbook.inventory import Budget


class Budgets:
    def __init__(self, path: Path, limits: dict[str, Budget]) -> None:
        self.path = path
        self.limits = limits

    def _load(self) -> dict[str, Any]:
        try:
            state = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        return state if isinstance(state, dict) else {}

    def _save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        temporary.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, self.path)

    def spend(self, kind: str, target: str, now: float | None = None) -> str | None:
        """Take one unit of budget; the reason for a refusal, or None when allowed."""
        limit = self.limits.get(kind)
        if limit is None:
            return None
        now = time.time() if now is None else now
        state = self._load()
        key = f"{kind}:{target}"
        entry = state.setdefault(key, {"times": [], "braked": False})
        if entry["braked"]:
            return (
                f"{kind} of {target} is braked since its budget ran out; a person must reset it "
                f"(python -m opsbook remediate --reset-budget {key})"
            )
        recent = [t for t in entry["times"] if now - t < limit.per_s]
        if len(recent) >= limit.count:
            entry["braked"] = True
            self._save(state)
            return (
                f"budget spent: {len(recent)} {kind}(s) of {target} within {limit.per_s:g}s "
                f"(max {limit.count}); braked until a person resets it"
            )
        entry["times"] = [*recent, now]
        self._save(state)
        return None

    def reset(self, key: str | None = None) -> list[str]:
        """Release the brake (and forget the history) of one key, or of all; returns the keys."""
        state = self._load()
        keys = [k for k in state if key in (None, k)]
        for k in keys:
            del state[k]
        self._save(state)
        return keys
