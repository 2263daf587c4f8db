"""Exceptions that cross module boundaries."""

from __future__ import annotations


class TargetUnreachable(Exception):
    """A target could not be reached, so the checks that need it could not be evaluated.

    The plugin turns it into one ERROR line per check ("could not evaluate"), never a FAIL.
    """

    def __init__(self, kind: str, name: str, where: str, reason: str) -> None:
        self.kind, self.name, self.where, self.reason = kind, name, where, reason
        super().__init__(self.line())

    def line(self) -> str:
        return f"unreachable: {self.kind} {self.name} ({self.where}): {self.reason}"
