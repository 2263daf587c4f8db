"""The contract every fix keeps, checked at collection (as pluggy checks a hook when it is
registered, not when it is called).

A fix is `def name(ctx: Context, *, apply: bool) -> Plan` with a docstring whose first line says
what it does, followed by `Changes:`, `Privileges:` and `Undo:` paragraphs, in that order.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from opsbook.remediate.plan import name_of

SIGNATURE = "(ctx: Context, *, apply: bool) -> Plan"
SECTIONS = ("Changes:", "Privileges:", "Undo:")


def _names(annotation: object, expected: str) -> bool:
    """Whether an annotation names `expected`: the class itself, or (from a module with
    `from __future__ import annotations`) its name as written, possibly dotted."""
    if isinstance(annotation, str):
        return annotation.rpartition(".")[2] == expected
    return getattr(annotation, "__name__", None) == expected


def _signature_problem(fix: Callable[..., Any]) -> str | None:
    try:
        signature = inspect.signature(fix)
    except (TypeError, ValueError):
        return f"its signature cannot be read; it must be {SIGNATURE}"
    parameters = list(signature.parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    shown = str(signature).replace("'", "")
    if (
        len(parameters) != 2
        or parameters[0].kind not in positional
        or parameters[0].default is not inspect.Parameter.empty
        or parameters[1].kind is not inspect.Parameter.KEYWORD_ONLY
        or parameters[1].name != "apply"
        or parameters[1].default is not inspect.Parameter.empty
    ):
        return f"signature {shown} must be {SIGNATURE}"
    if not (
        _names(parameters[0].annotation, "Context")
        and _names(parameters[1].annotation, "bool")
        and _names(signature.return_annotation, "Plan")
    ):
        return f"signature {shown} must be annotated {SIGNATURE}"
    return None


def _docstring_problem(fix: Callable[..., Any]) -> str | None:
    doc = inspect.getdoc(fix)
    if not doc or doc.startswith(SECTIONS):
        return "needs a docstring: a first line saying what it does, then " + ", ".join(SECTIONS)
    lines = [line.strip() for line in doc.splitlines()]
    found: list[str] = []
    for section in SECTIONS:
        at = [i for i, line in enumerate(lines) if line.startswith(section)]
        if not at:
            found.append(f"no {section} paragraph")
        elif not lines[at[0]].removeprefix(section).strip() and (
            at[0] + 1 >= len(lines) or not lines[at[0] + 1] or lines[at[0] + 1].endswith(":")
        ):
            found.append(f"{section} paragraph is empty")
    if found:
        return "docstring: " + ", ".join(found) + f" (it needs {', '.join(SECTIONS)})"
    starts = [next(i for i, line in enumerate(lines) if line.startswith(s)) for s in SECTIONS]
    if starts != sorted(starts):
        return f"docstring: the paragraphs must come in the order {', '.join(SECTIONS)}"
    return None


def problems(fix: object) -> tuple[str, ...]:
    """What is wrong with `fix` as a remediation, one line each (empty when it keeps the
    contract). Cached: a check parametrized over many targets links the same fix each time."""
    try:
        return _problems(fix)
    except TypeError:  # not hashable, so not cached
        return _problems.__wrapped__(fix)


@functools.cache
def _problems(fix: object) -> tuple[str, ...]:
    if not callable(fix):
        return (f"remediation {fix!r} is not callable",)
    found = [_signature_problem(fix), _docstring_problem(fix)]
    name = name_of(fix) if hasattr(fix, "__qualname__") else repr(fix)
    return tuple(f"remediation {name}: {problem}" for problem in found if problem)
