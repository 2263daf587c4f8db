"""Remediation budgets that persist across runs, with a brake only a person releases.

Each (kind, service) may be applied `count` times within `per_s` seconds: a budget is charged
to the service a step acts on (a worker restart spends the worker's, not the queue's). They
live in the deployment's state directory, beside its lock and audit log, so that every run
against the deployment shares them whatever its reports folder. The first refusal
sets the brake: further attempts are refused, even after the window has passed, until a person
runs `python -m opsbook remediate --reset-budget` (Monit's "N restarts within M cycles, then
stop"). The state is a small JSON file, written atomically.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from opsbook.inventory import Budget
from opsbook.report_files import FILE_MODE


class Budgets:
    def __init__(self, path: Path, limits: dict[str, Budget]) -> None:
        self.path = path
        self.limits = limits

    def _load(self) -> dict[str, Any]:
        try:
            state = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            # Spending from a budget nobody can read would be spending without limit.
            raise OSError(f"the budgets in {self.path} are not readable JSON") from None
        return state if isinstance(state, dict) else {}

    def _save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Aside under a name of its own (a reset may run beside a run), then renamed into place.
        temporary = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}")
        temporary.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        temporary.chmod(FILE_MODE)
        os.replace(temporary, self.path)

    def spend(self, kind: str, target: str, now: float | None = None) -> str | None:
        """Take one unit of budget; the reason for a refusal, or None when allowed."""
        limit = self.limits.get(kind)
        if limit is None:
            return None
        now = time.time() if now is None else now
        try:
            state = self._load()
        except OSError as exc:
            return f"{kind} of {target} refused: {exc}"
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
        """Release the brake (and forget the history) of one key, or of all; returns the keys.
        Resetting all replaces an unreadable file; resetting one key raises OSError then."""
        try:
            state = self._load()
        except OSError:
            if key is not None:
                raise
            state = {"(unreadable budgets)": None}
        keys = [k for k in state if key in (None, k)]
        for k in keys:
            del state[k]
        self._save(state)
        return keys
