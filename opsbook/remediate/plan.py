"""A remediation's plan: the exact commands or SQL it would run, and what came of them."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol


class StepKind(enum.StrEnum):
    """What a step changes: the one list of kinds, for the allow-list, the budgets, the docs.

    A risky kind changes a running system in a way that needs a person's explicit allow-list
    (`--allow=KIND` or the inventory's `remediation.allow`). Members are their names as
    strings ("restart"), which is how plans, budgets and the audit log spell them.
    """

    RESTART = "restart", True, "restart a service through the runtime (in-flight work is lost)"
    RECREATE = "recreate", True, "recreate a service's container or process from scratch"
    RELOAD = "reload", False, "make a service read its configuration again (SIGHUP), no restart"
    SCALE = "scale", False, "change how many replicas of a service run"
    END_SESSIONS = "end-sessions", True, "end database sessions (open transactions roll back)"
    DELETE_FILES = "delete-files", True, "delete files (cannot be undone)"
    ALTER_SYSTEM = "alter-system", True, "change PostgreSQL's server settings (ALTER SYSTEM)"
    MAINTENANCE = "maintenance", False, "VACUUM or ANALYZE tables (reads and writes go on)"
    CREATE_INDEX = "create-index", False, "build or rebuild an index without blocking writes"
    REQUEUE = "requeue", False, "move queued messages between lists, losing or doubling none"
    TRIM = "trim", True, "trim dead letters (archived first) or old history in Redis, never pending"
    BACKUP = "backup", False, "take a backup (production data is only read)"
    RESTORE = "restore", True, "overwrite databases and queues with a backup's contents"
    RESTORE_LIVE = (
        "restore-live", True,
        "restore while writers the runtime cannot stop keep running (their writes may be lost)",
    )  # fmt: skip
    ROLLBACK = "rollback", True, "deploy the previous release again"
    MAINTENANCE_MODE = "maintenance-mode", False, "switch the frontend's maintenance page"
    CONTAIN = (
        "contain",
        True,
        "close the public entry in an incident (every user is cut off), or open it again",
    )
    ROTATE = (
        "rotate",
        True,
        "replace a credential: its secret file, the server's password, its consumers restarted",
    )

    risky: bool
    description: str

    def __new__(cls, value: str, risky: bool, description: str) -> StepKind:
        member = str.__new__(cls, value)
        member._value_ = value
        member.risky = risky
        member.description = description
        return member

    @classmethod
    def named(cls, name: str) -> StepKind:
        """The kind spelled `name` ("end-sessions"); ValueError naming the known ones."""
        for kind in cls:
            if kind.value == name:
                return kind
        raise ValueError(f"no such kind of step: {name} (known: {', '.join(cls)})")


def name_of(fix: Callable[..., Any]) -> str:
    """A fix's name as reports and the audit log give it: its module, a dot, its function."""
    return f"{fix.__module__}.{fix.__qualname__}"


def risky_kinds() -> list[StepKind]:
    return [kind for kind in StepKind if kind.risky]


# The risky kinds by name, for code that only has a string.
RISKY = frozenset(kind.value for kind in risky_kinds())


def parse_allow(given: Iterable[str]) -> frozenset[StepKind]:
    """The kinds of `--allow` values (repeated, or comma-separated); ValueError for a kind
    that does not exist, naming the risky ones (the only ones an allow-list changes)."""
    names = {name.strip() for value in given for name in value.split(",")} - {""}
    unknown = sorted(name for name in names if name not in set(StepKind))
    if unknown:
        raise ValueError(
            f"--allow: no such kind of step: {', '.join(unknown)} "
            f"(risky kinds: {', '.join(risky_kinds())})"
        )
    return frozenset(StepKind.named(name) for name in names)


def kinds_table() -> str:
    """The kinds as the Markdown table docs/remediation.md shows (a test keeps them equal)."""
    rows = [
        f"| `{kind}` | {'yes' if kind.risky else 'no'} | {kind.description} |" for kind in StepKind
    ]
    return "\n".join(["| kind | risky | what it does |", "|---|---|---|", *rows])


class Refused(Exception):
    """A step may not run (not allowed, over budget, no lock); nothing further was attempted."""


class RemediationFailed(Exception):
    """A step failed; the message says what was attempted and what went wrong."""


NOT_DONE = "not done: a step before failed"


@dataclass
class Step:
    """One action: what it does, the exact command or SQL, and its kind (for allow-list and
    budgets)."""

    summary: str
    command: str
    kind: StepKind
    action: Callable[[], object] = field(repr=False, compare=False)
    when: Callable[[], bool] | None = field(default=None, repr=False, compare=False)
    condition: str | None = None  # shown in the plan: "if backend is still unhealthy"
    result: str | None = None
    # The service the step acts on, which its kind's budget is charged to (default: the
    # service of the failing target).
    service: str | None = None
    # Runs also after a step before it failed or was refused: what undoes the plan's own
    # interruption (start again what it stopped, remove what it unpacked).
    always: bool = False

    @property
    def done(self) -> bool:
        """Whether the step ran and did what it does."""
        return (
            self.result is not None
            and self.result != "not needed"
            and not self.result.startswith(("FAILED: ", NOT_DONE))
        )

    def line(self) -> str:
        done = f" -> {self.result}" if self.result is not None else ""
        condition = f" (only {self.condition})" if self.condition else ""
        return f"[{self.kind}] {self.summary}{condition}: {self.command}{done}"


Gate = Callable[[Step], None]


class FixContext(Protocol):
    """What a plan needs of the fix's Context (opsbook.remediate.context), named here so that
    this module need not import it: the context imports the plan."""

    target_kind: str
    target: str

    @property
    def fix_name(self) -> str: ...


@dataclass
class Plan:
    """What a remediation would do (or did) for one target."""

    remediation: str
    target: str
    steps: list[Step] = field(default_factory=list)
    nothing_to_do: str | None = None
    applied: bool = False

    @classmethod
    def for_fix(cls, ctx: FixContext, target: str | None = None) -> Plan:
        """The empty plan of the fix that `ctx` runs, named after the fix's function; its
        target is the failing one (`postgres/chatdb`) unless the fix says otherwise."""
        return cls(ctx.fix_name, f"{ctx.target_kind}/{ctx.target}" if target is None else target)

    def add(
        self,
        summary: str,
        command: str,
        kind: StepKind,
        action: Callable[[], object],
        *,
        only_if: tuple[str, Callable[[], bool]] | None = None,
        service: str | None = None,
        always: bool = False,
    ) -> None:
        """Add a step; `only_if=(description, test)` runs it only when the test holds then;
        `service` is the service it acts on, when that is not the failing target's (budgets
        are charged to it); `always` runs it also after a step before it failed."""
        condition, when = only_if if only_if else (None, None)
        self.steps.append(
            Step(summary, command, kind, action, when, condition, service=service, always=always)
        )

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
        """Run the steps in order; each passes the gate first. Errors are never swallowed.

        After a step fails or is refused, only the `always` steps still run, each whatever
        became of the one before; the error is then one line: the step, why, what was done
        before it (by summary: the plan has the commands) and what the always steps did.
        """
        failure: Refused | RemediationFailed | None = None
        afterwards: list[Step] = []  # the always steps run after the failure
        for index, step in enumerate(self.steps):
            if failure is not None and not step.always:
                step.result = NOT_DONE
                continue
            try:
                self._run(index, gate)
            except (Refused, RemediationFailed) as exc:
                if failure is None:
                    failure = exc
                    continue
                step.result = step.result or f"FAILED: {exc}"
            if failure is not None:
                afterwards.append(step)
        if failure is not None:
            said = [f"{s.summary}: {s.result}" for s in afterwards if s.result != "not needed"]
            undone = f"; afterwards: {'; '.join(said) or 'nothing to undo'}" if afterwards else ""
            raise type(failure)(f"{failure}{undone}") from failure
        self.applied = True
        return self

    def _run(self, index: int, gate: Gate) -> None:
        """One step past the gate; its result set ("FAILED: ..." when it raised)."""
        step = self.steps[index]
        if step.when is not None and not step.when():
            step.result = "not needed"
            return
        gate(step)
        try:
            outcome = step.action()
        except Refused:
            raise
        except Exception as exc:
            step.result = f"FAILED: {type(exc).__name__}: {exc}"
            done = [s.summary for s in self.steps[:index] if s.done]
            raise RemediationFailed(
                f"{self.remediation or 'fix'} on {self.target}: step '{step.summary}' failed: "
                f"{type(exc).__name__}: {exc} (done before it: {'; '.join(done) or 'nothing'})"
            ) from exc
        step.result = "done" if outcome is None else str(outcome)

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
