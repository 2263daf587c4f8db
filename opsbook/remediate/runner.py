"""Running a remediation under the rules: plan first, then lock, allow-list, budget, audit.

`Remediator.apply_one` is the one way a fix is carried out (lock, run, verify, record in the
audit log, release): the pytest plugin (`--remediate=plan|apply`) and the commands
(`python -m opsbook remediate`, `backup restore`, `maintenance`) all go through it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msgspec import Struct

from opsbook.inventory import Inventory
from opsbook.outcome import FixVerdict
from opsbook.remediate.audit import AuditLog
from opsbook.remediate.budget import Budgets
from opsbook.remediate.context import Context
from opsbook.remediate.lock import RemediationLock
from opsbook.remediate.plan import Plan, Refused, RemediationFailed, Step, name_of

Remediation = Callable[..., Plan]

LOCK = ".remediation.lock"
BUDGETS = "remediation-budgets.json"
AUDIT = "audit.log"

# The check run again after a fix, by whoever applies it: it sets the attempt's verdict and
# `after` (the plugin runs the pytest item again, a command runs pytest on the row's node id).
Verify = Callable[["Attempt"], None]


class Attempt(Struct):
    """What happened when a remediation was asked for."""

    remediation: str
    status: str  # planned, nothing-to-do, applied, refused, skipped, failed
    reason: str = ""
    plan: Plan | None = None
    verdict: FixVerdict | None = None  # FIXED or NOT FIXED, once the check has run again
    after: str = ""
    # Why the audit log does not hold this attempt ("" when it does, or needs not).
    not_audited: str = ""

    def summary(self) -> str:
        parts = [f"{self.remediation}: {self.status}"]
        if self.verdict:
            parts.append(self.verdict)
        if self.reason:
            parts.append(self.reason)
        return " - ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "remediation": self.remediation,
            "status": self.status,
            "reason": self.reason or None,
            "verdict": self.verdict,
            "after": self.after or None,
            "plan": self.plan.lines() if self.plan else [],
        }


@dataclass
class Remediator:
    """The rules of one run: what may be applied, and the shared state under reports_dir."""

    inventory: Inventory
    reports_dir: Path
    run_id: str
    allow: frozenset[str] = frozenset()
    _lock: RemediationLock | None = None
    _lock_problem: str | None = None

    def __post_init__(self) -> None:
        self.allow = frozenset(self.allow) | frozenset(self.inventory.remediation.allow)
        self.budgets = Budgets(self.reports_dir / BUDGETS, self.inventory.remediation.budgets)
        self.audit = AuditLog(self.reports_dir / AUDIT)

    def take_lock(self) -> bool:
        lock = RemediationLock(self.reports_dir / LOCK)
        try:
            taken = lock.acquire(f"run {self.run_id}")
        except OSError as exc:
            # A full disk, say: nothing is applied where its audit trail cannot be written.
            self._lock_problem = (
                f"cannot take the remediation lock in {self.reports_dir}: {exc.strerror or exc}"
            )
            return False
        if taken:
            self._lock = lock
            return True
        self._lock_problem = f"another run holds the remediation lock ({lock.holder()})"
        return False

    def release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _gate(self, ctx: Context) -> Callable[[Step], None]:
        spent: set[str] = set()  # one application of a fix spends each kind's budget once

        def gate(step: Step) -> None:
            refusal = self._not_allowed([step])
            if refusal:
                raise Refused(refusal)
            if step.kind in spent:
                return
            reason = self.budgets.spend(step.kind, f"{ctx.target_kind}/{ctx.target}")
            if reason:
                raise Refused(reason)
            spent.add(step.kind)

        return gate

    def _not_allowed(self, steps: list[Step]) -> str | None:
        kinds = sorted({s.kind for s in steps if s.kind.risky and s.kind not in self.allow})
        if not kinds:
            return None
        flags = " ".join(f"--allow={kind}" for kind in kinds)
        return f"not allowed: {', '.join(kinds)} (allow with {flags} or remediation.allow)"

    def _run(self, fix: Remediation, ctx: Context, *, apply: bool) -> Attempt:
        name = name_of(fix)
        ctx.run_id = self.run_id
        ctx.fix = fix
        try:
            plan = fix(ctx, apply=False)
        except Exception as exc:
            return Attempt(name, "failed", f"planning failed: {type(exc).__name__}: {exc}")
        if plan.nothing_to_do is not None:
            return Attempt(name, "nothing-to-do", plan.nothing_to_do, plan)
        if not apply:
            return Attempt(name, "planned", "", plan)
        if self._lock is None:
            return Attempt(name, "skipped", self._lock_problem or "no remediation lock", plan)
        # Steps that always run must all be allowed before anything is done; a conditional
        # escalation (recreate if a restart was not enough) is refused only if it is needed.
        refusal = self._not_allowed([s for s in plan.steps if s.when is None])
        if refusal:
            return Attempt(name, "refused", refusal, plan)
        ctx.gate = self._gate(ctx)
        try:
            done = fix(ctx, apply=True)
        except Refused as exc:
            return Attempt(name, "refused", str(exc), plan)
        except RemediationFailed as exc:
            return Attempt(name, "failed", str(exc), plan)
        except Exception as exc:
            return Attempt(name, "failed", f"{type(exc).__name__}: {exc}", plan)
        if done.nothing_to_do is not None:
            return Attempt(name, "nothing-to-do", done.nothing_to_do, done)
        return Attempt(name, "applied", "", done)

    def apply_one(
        self,
        fix: Remediation,
        ctx: Context,
        *,
        apply: bool,
        redact: Callable[[str], str],
        verify: Verify | None = None,
    ) -> Attempt:
        """Plan or apply one fix: under the lock (the run's, or one taken for this fix alone),
        run it, let `verify` run the check again, record the attempt in the audit log, release.

        The attempt's `not_audited` says why the audit log does not hold it, if it does not:
        a caller must show that and exit accordingly (audit.EXIT_NOT_AUDITED).
        """
        taken = apply and self._lock is None and self.take_lock()
        try:
            attempt = self._run(fix, ctx, apply=apply)
            if verify is not None:
                verify(attempt)
            attempt.not_audited = self._record(attempt, ctx, redact) or ""
        finally:
            if taken:
                self.release_lock()
        return attempt

    def _record(self, attempt: Attempt, ctx: Context, redact: Callable[[str], str]) -> str | None:
        """Append an attempt that acted, or tried to, to the audit log; say why not if it
        cannot be (the attempt's reason says it too)."""
        if attempt.status not in ("applied", "failed", "refused"):
            return None
        entry = {
            "run": self.run_id,
            "check": ctx.check_id,
            "target": f"{ctx.target_kind}/{ctx.target}",
            "remediation": attempt.remediation,
            "status": attempt.status,
            "verdict": attempt.verdict,
            "reason": redact(attempt.reason),
            "steps": [redact(line) for line in (attempt.plan.lines() if attempt.plan else [])],
        }
        try:
            self.audit.append(entry)
        except OSError as exc:
            # What was done stays done: it must be seen, with why the log does not hold it.
            missing = f"NOT in the audit log {self.audit.path}: {exc.strerror or exc}"
            attempt.reason = f"{attempt.reason}; {missing}" if attempt.reason else missing
            return missing
        return None
