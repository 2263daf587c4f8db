"""A remediation's plan: the exact commands or SQL it would run, and what came of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Kinds that change a running system in ways that need a person's explicit allow-list.
RISKY = frozenset(
    {"restart", "recreate", "end-sessions", "delete-files", "alter-system", "restore", "rollback"}
)


class Refused(Exception):
    """A step may not run (not allowed, over budget, no lock); nothing further was attempted."""


class RemediationFailed(Exception):
    """A step failed; the message says what was attempted and what went wrong."""


@dataclass
class Step:
    """One action: what it does, the exact command or SQL, and its kind (for allow-list and
    budgets)."""

    summary: str
    command: str
    kind: str
    action: Callable[[], object] = field(repr=False, compare=False)
    when: Callable[[], bool] | None = field(default=None, repr=False, compare=False)
    condition: str | None = None  # shown in the plan: "if backend is still unhealthy"
    result: str | None = None

    def line(self) -> str:
        done = f" -> {self.result}" if self.result is not None else ""
        condition = f" (only {self.condition})" if self.condition else ""
        return f"[{self.kind}] {self.summary}{condition}: {self.command}{done}"


Gate = Callable[[Step], None]


@dataclass
class Plan:
    """What a remediation would do (or did) for one target."""

    remediation: str
    target: str
    steps: list[Step] = field(default_factory=list)
    nothing_to_do: str | None = None
    applied: bool = False

    def add(
        self,
        summary: str,
        command: str,
        kind: str,
        action: Callable[[], object],
        *,
        only_if: tuple[str, Callable[[], bool]] | None = None,
    ) -> None:
        """Add a step; `only_if=(description, test)` runs it only when the test holds then."""
        condition, when = only_if if only_if else (None, None)
        self.steps.append(Step(summary, command, kind, action, when, condition))

    def nothing(self, reason: str) -> Plan:
        """Mark the plan empty: the condition it fixes is not there (idempotency)."""
        self.nothing_to_do = reason
        return self

    def finish(self, apply: bool, gate: Gate) -> Plan:
        """The remediation's last line: act only when applying and when there is work."""
        if apply and self.nothing_to_do is None:
            return self.execute(gate)
        return self

    def execute(self, gate: Gate) -> Plan:
        """Run the steps in order; each passes the gate first. Errors are never swallowed."""
        for index, step in enumerate(self.steps):
            if step.when is not None and not step.when():
                step.result = "not needed"
                continue
            gate(step)
            try:
                outcome = step.action()
            except Refused:
                raise
            except Exception as exc:
                done = "; ".join(s.line() for s in self.steps[:index]) or "nothing"
                raise RemediationFailed(
                    f"{self.remediation} on {self.target}: step '{step.summary}' failed: "
                    f"{type(exc).__name__}: {exc} (before it: {done})"
                ) from exc
            step.result = "done" if outcome is None else str(outcome)
        self.applied = True
        return self

    def lines(self) -> list[str]:
        if self.nothing_to_do is not None:
            return [f"nothing to do: {self.nothing_to_do}"]
        return [step.line() for step in self.steps]

    def to_dict(self) -> dict[str, Any]:
        return {
            "remediation": self.remediation,
            "target": self.target,
            "nothing_to_do": self.nothing_to_do,
            "applied": self.applied,
            "steps": [
                {"summary": s.summary, "command": s.command, "kind": s.kind, "result": s.result}
                for s in self.steps
            ],
        }
