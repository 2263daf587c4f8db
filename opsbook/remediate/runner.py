"""Running a remediation under the rules: plan first, then lock, allow-list, budget, audit.

`Remediator.apply_one` is the one way a fix is carried out (lock, intent in the audit log, run,
verify, outcome in the audit log, release): the pytest plugin (`--remediate=plan|apply`) and
the commands (`python -m opsbook remediate`, `backup restore`, `maintenance`) all go through it.

The lock, the budgets and the audit log belong to the deployment, not to a reports folder: they
live in its state directory (`state_dir(inventory)`), so that every run against it shares
them, whichever folder or reports directory it starts from.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from msgspec import Struct

from opsbook.inventory import Inventory
from opsbook.outcome import FixVerdict
from opsbook.remediate import contained
from opsbook.remediate.audit import Anchor, AuditKeyError, AuditLog, load_key
from opsbook.remediate.budget import Budgets
from opsbook.remediate.context import Context
from opsbook.remediate.lock import RemediationLock
from opsbook.remediate.plan import Plan, Refused, RemediationFailed, Step, StepKind, name_of

Remediation = Callable[..., Plan]

LOCK = "remediation.lock"
BUDGETS = "remediation-budgets.json"
AUDIT = "audit.log"
KEY = "audit.key"
STATE_MODE = 0o750
TERMINATED = "terminated (SIGTERM) while the fix ran: its waits were abandoned"


def state_dir(inventory: Inventory) -> Path:
    """The deployment's state directory: the inventory's `state_dir`, else
    <opsbook home>/.opsbook/deployments/<name>."""
    if inventory.state_dir is not None:
        return inventory.state_dir.expanduser()
    from opsbook.locations import home

    name = re.sub(r"[^A-Za-z0-9._-]", "_", inventory.name) or "_"
    return home() / ".opsbook" / "deployments" / name


def anchor_of(inventory: Inventory) -> Anchor:
    trail = inventory.remediation.audit_trail
    return Anchor(
        inventory.name, trail.textfile_dir, trail.pushgateway, inventory.thresholds.timeout_s
    )


def key_path(inventory: Inventory) -> Path:
    named = inventory.remediation.audit_trail.key_file
    return named.expanduser() if named is not None else state_dir(inventory) / KEY


def audit_log(inventory: Inventory, *, create_key: bool = False) -> AuditLog:
    """The deployment's audit log, with its key (AuditKeyError when it cannot be read; with
    `create_key`, one is generated in the state directory if the inventory names none)."""
    named = inventory.remediation.audit_trail.key_file is not None
    key = load_key(key_path(inventory), create=create_key and not named)
    return AuditLog(state_dir(inventory) / AUDIT, key, anchor_of(inventory))


def audit_head(inventory: Inventory) -> dict[str, Any] | None:
    """The head of the deployment's audit log, as a run's findings.json records it (None
    when there is no log)."""
    log = AuditLog(state_dir(inventory) / AUDIT)
    return log.head() if log.path.exists() else None


class Terminated(BaseException):
    """SIGTERM arrived while a fix ran: what it waits for is abandoned. A BaseException, so
    that no `except Exception` of a fix or a verification holds it up. `handled`: the program
    had a handler of its own, which has run (pytest's stops the session after this check)."""

    def __init__(self, handled: bool) -> None:
        super().__init__(TERMINATED)
        self.handled = handled


@contextlib.contextmanager
def _abandon_on_sigterm() -> Iterator[None]:
    """While a fix runs, SIGTERM first does what it did before (the run's own handler stops
    the session after this check) and then abandons the fix's waits."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    fired = False

    def abandon(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        fired = True
        signal.signal(signal.SIGTERM, previous)
        if callable(previous):
            previous(signum, frame)
        raise Terminated(handled=callable(previous))

    signal.signal(signal.SIGTERM, abandon)
    try:
        yield
    finally:
        if not fired:
            signal.signal(signal.SIGTERM, previous)


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
    """The rules of one run: what may be applied, and the deployment's shared state (lock,
    budgets, audit log) in its state directory. `reports_dir` is where the run reports."""

    inventory: Inventory
    reports_dir: Path
    run_id: str
    allow: frozenset[str] = frozenset()
    _lock: RemediationLock | None = None
    _lock_problem: str | None = None

    def __post_init__(self) -> None:
        self.allow = frozenset(self.allow) | frozenset(self.inventory.remediation.allow)
        self.state_dir = state_dir(self.inventory)
        self.budgets = Budgets(self.state_dir / BUDGETS, self.inventory.remediation.budgets)
        # The key is read (or made) when the first entry is written, under the lock.
        self.audit = AuditLog(self.state_dir / AUDIT, None, anchor_of(self.inventory))
        # The intent of the fix being applied, for the outcome of one cut short.
        self._pending: tuple[str, Plan, int | None] | None = None
        self._redact: Callable[[str], str] = str

    def take_lock(self) -> bool:
        lock = RemediationLock(self.state_dir / LOCK)
        try:
            self.state_dir.mkdir(mode=STATE_MODE, parents=True, exist_ok=True)
            taken = lock.acquire(f"run {self.run_id}")
        except OSError as exc:
            # A full disk, say: nothing is applied where its audit trail cannot be written.
            self._lock_problem = (
                f"cannot take the remediation lock in {self.state_dir}: {exc.strerror or exc}"
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
        # One application of a fix spends each kind's budget of each service once.
        spent: set[tuple[str, str]] = set()

        def gate(step: Step) -> None:
            refusal = self._not_allowed([step])
            if refusal:
                raise Refused(refusal)
            # Charged to the service the step acts on: a worker restart for a stalled queue
            # spends the worker's budget, not Redis's.
            charged = (step.kind, step.service or self.inventory.service_of(ctx.target))
            # An entry an incident's containment closed is closed on purpose: only the
            # containment's own steps (release) may open it.
            held = contained.read(self.state_dir)
            if held is not None and step.kind != StepKind.CONTAIN and held.holds(charged[1]):
                raise Refused(
                    f"{charged[1]} is {held.line()}; `opsbook incident release` opens it again"
                )
            if charged in spent:
                return
            reason = self.budgets.spend(*charged)
            if reason:
                raise Refused(reason)
            spent.add(charged)

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
        # Written ahead: no fix acts unless its intent is in the audit log.
        try:
            intent = self._write("intent", ctx, name, plan.lines())
        except (OSError, AuditKeyError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            return Attempt(
                name, "skipped", f"not applied: the audit log cannot take its intent: {why}", plan
            )
        self._pending = (name, plan, intent)
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
        write its intent to the audit log, run it, let `verify` run the check again, write the
        outcome, release. SIGTERM meanwhile abandons the fix's and the verification's waits
        (the outcome says so); a program without a SIGTERM handler of its own then exits 143.

        The attempt's `not_audited` says why the audit log does not hold it, if it does not:
        a caller must show that and exit accordingly (audit.EXIT_NOT_AUDITED).
        """
        taken = apply and self._lock is None and self.take_lock()
        self._redact = redact
        self._pending = None
        attempt: Attempt | None = None
        terminated: Terminated | None = None
        try:
            try:
                with _abandon_on_sigterm() if apply else contextlib.nullcontext():
                    attempt = self._run(fix, ctx, apply=apply)
                    if verify is not None:
                        verify(attempt)
            except Terminated as exc:
                terminated = exc
                attempt = self._cut_short(fix, attempt)
            attempt.not_audited = self._record(attempt, ctx, redact) or ""
        finally:
            self._pending = None
            if taken:
                self.release_lock()
        if terminated is not None and not terminated.handled:
            # Nobody else handles SIGTERM (a command): the program ends, as it would have.
            raise SystemExit(128 + signal.SIGTERM)
        return attempt

    def _cut_short(self, fix: Remediation, attempt: Attempt | None) -> Attempt:
        """The attempt SIGTERM interrupted: still being applied, or being verified."""
        if attempt is None:
            name, plan, _ = self._pending or (name_of(fix), None, None)
            return Attempt(name, "failed", f"{TERMINATED}; what it did is not known", plan)
        if attempt.status == "applied" and attempt.verdict is None:
            attempt.verdict = FixVerdict.NOT_FIXED
            attempt.after = "not verified"
        attempt.reason = f"{attempt.reason}; {TERMINATED}" if attempt.reason else TERMINATED
        return attempt

    def _write(self, event: str, ctx: Context, name: str, steps: list[str], **more: Any) -> int:
        """Append one entry (the key is read, or made, on the first); its sequence number."""
        if self.audit.key is None:
            self.audit.key = audit_log(self.inventory, create_key=True).key
        redact = self._redact
        entry = self.audit.append(
            {
                "event": event,
                "run": self.run_id,
                "check": ctx.check_id,
                "target": f"{ctx.target_kind}/{ctx.target}",
                "remediation": name,
                **{k: redact(v) if isinstance(v, str) else v for k, v in more.items()},
                "steps": [redact(line) for line in steps],
            }
        )
        return int(entry["seq"])

    def _record(self, attempt: Attempt, ctx: Context, redact: Callable[[str], str]) -> str | None:
        """Append the outcome of an attempt that acted, or tried to, to the audit log; say why
        not if it cannot be (the attempt's reason says it too). An outcome names its intent;
        a refusal or failure before anything acted has none. Every intent gets its outcome,
        "nothing-to-do" included (the condition was gone when the fix looked again)."""
        intent = self._pending[2] if self._pending is not None else None
        if intent is None and attempt.status not in ("applied", "failed", "refused"):
            return None
        try:
            self._write(
                "outcome", ctx, attempt.remediation,
                attempt.plan.lines() if attempt.plan else [],
                intent=intent, status=attempt.status, verdict=attempt.verdict,
                reason=attempt.reason,
            )  # fmt: skip
        except (OSError, AuditKeyError) as exc:
            # What was done stays done: it must be seen, with why the log does not hold it.
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            missing = f"NOT in the audit log {self.audit.path}: {why}"
            attempt.reason = f"{attempt.reason}; {missing}" if attempt.reason else missing
            return missing
        if self.audit.unanchored:
            return self.audit.unanchored
        return None
