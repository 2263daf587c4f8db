"""Exceptions that cross module boundaries."""

from __future__ import annotations


class NotEvaluated(Exception):
    """The check could not reach a verdict: the facts it needs could not be observed.

    The plugin reports it as one ERROR line ("could not evaluate"), never as a FAIL, and never
    remediates it: nothing is known to be wrong. Raise it from a probe or a check with the
    reason, already naming the target: `NotEvaluated("host web1: df gave no answer within 3 s")`.
    """

    def line(self) -> str:
        return str(self)


class TargetUnreachable(NotEvaluated):
    """A target could not be reached, so the checks that need it could not be evaluated."""

    def __init__(
        self, kind: str, name: str, where: str, reason: str, *, silent: bool = False
    ) -> None:
        self.kind, self.name, self.where, self.reason = kind, name, where, reason
        # No answer within the timeout (a hung process, a dropped route), as against a refusal
        # or an error: when every target of a deployment is silent, the runner may be the one
        # cut off, and no readiness check can tell a dead service from a lost route.
        self.silent = silent
        super().__init__(self.line())

    def line(self) -> str:
        return f"unreachable: {self.kind} {self.name} ({self.where}): {self.reason}"
