"""The outcomes of a check and of a fix, and the units of observed values: the shared contract.

Every part of opsbook counts with these: the terminal, findings.json, JUnit, metrics, `opsbook
status` and the exit code. docs/outcomes.md says how each outcome counts in each of them.
"""

from __future__ import annotations

import enum


class Outcome(enum.StrEnum):
    """What became of one check on one target.

    The values are what findings.json and the metrics have always written ("error" is pytest's
    ERROR, "skipped" its SKIPPED), so that earlier runs stay comparable.
    """

    PASSED = "passed"
    FAILED = "failed"
    # The facts could not be observed: the target is unreachable or a probe gave no answer.
    NOT_EVALUATED = "error"
    # A dependency of the target failed or could not be reached (the inventory's services).
    BLOCKED = "blocked"
    # Nothing to compare: the inventory does not ask for it, or the target has no such thing.
    NOT_APPLICABLE = "skipped"
    # A failure accepted until a date by a waiver (owner, ticket, reason).
    WAIVED = "waived"
    # It failed, its linked fix was applied, and the same check then passed.
    FIXED = "fixed"

    @property
    def bad(self) -> bool:
        """Whether the outcome needs a person: the run is not green while one is left."""
        return self in (Outcome.FAILED, Outcome.NOT_EVALUATED, Outcome.BLOCKED)

    @property
    def good(self) -> bool:
        return self in (Outcome.PASSED, Outcome.FIXED, Outcome.WAIVED)


class FixVerdict(enum.StrEnum):
    """What a fix applied to a failing check came to, proven by running the check again."""

    FIXED = "FIXED"
    NOT_FIXED = "NOT FIXED"
    # Not applied: not allowed, over budget, another run holds the lock (a blocked check's fix
    # is not attempted at all: its cause is fixed first).
    REFUSED = "REFUSED"


class Unit(enum.StrEnum):
    """The unit of an observed value; reports print it after the number."""

    PERCENT = "%"
    SECONDS = "s"
    MILLISECONDS = "ms"
    BYTES = "B"
    MEBIBYTES = "MiB"
    COUNT = "count"
    RATIO = "ratio"
    PER_SECOND = "/s"

    def show(self, value: float) -> str:
        """`42 %`, `1.5 s`, `12 MiB`, `3` (a count needs no unit)."""
        number = f"{value:g}" if isinstance(value, float) else str(value)
        return number if self is Unit.COUNT else f"{number} {self.value}"
