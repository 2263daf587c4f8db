"""Every check linked to a fix has a test that breaks its component for real and sees FIXED.

Read statically with `ast`, as tests/test_breaks_coverage.py reads `breaks`: the linked checks
are the `@check("ID", ..., remediation=...)` decorators in checks/*.py; the proofs are the
`pytest.mark.fixes("ID", ...)` markers in tests/, wherever a marker can mark a test (a
function, a class, `pytestmark`, `pytest.param(..., marks=...)`).
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

from test_breaks_coverage import (
    CHECKS,
    REPO,
    TESTS,
    Found,
    Site,
    _attached,
    _literal_ids,
    _name,
    _parse,
    _read,
)

MARKER = "pytest.mark.fixes"


def linked_check_ids(source: str, path: Path) -> Found:
    """The ids of the `@check("ID", ..., remediation=FIX)` decorators of a checks module."""
    found = Found({}, [])
    for node in ast.walk(_parse(source, path)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for decorator in node.decorator_list:
            if (
                not isinstance(decorator, ast.Call)
                or _name(decorator.func).rsplit(".", 1)[-1] != "check"
                or not any(k.arg == "remediation" for k in decorator.keywords)
            ):
                continue
            site = Site(path, decorator.lineno)
            first = decorator.args[0] if decorator.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.ids.setdefault(first.value, []).append(site)
            else:
                found.problems.append(f"{site}: @check on {node.name} has no literal id first")
    return found


def fixes_ids(source: str, path: Path) -> Found:
    """The ids of the `pytest.mark.fixes(...)` markers of a test module."""
    tree = _parse(source, path)
    found = Found({}, [])
    attached = {id(mark) for mark in _attached(tree)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _name(node.func) == MARKER:
            site = Site(path, node.lineno)
            if id(node) not in attached:
                found.problems.append(f"{site}: a fixes marker that marks no test")
                continue
            ids = _literal_ids(node, site, "fixes", found.problems)
            if not ids and not node.args:
                found.problems.append(f"{site}: fixes() names no check id")
            for check_id in ids:
                found.ids.setdefault(check_id, []).append(site)
        elif isinstance(node, ast.Attribute) and _name(node) == MARKER and id(node) in attached:
            found.problems.append(f"{Site(path, node.lineno)}: @pytest.mark.fixes needs ids")
    return found


def test_every_linked_fix_has_a_test_that_sees_it_fixed() -> None:
    linked = _read(CHECKS, linked_check_ids)
    proofs = _read(TESTS, fixes_ids)
    assert len(linked.ids) > 15, f"read only {len(linked.ids)} linked check ids from {CHECKS}"
    assert not linked.problems, "\n".join(linked.problems)
    assert not proofs.problems, "\n".join(proofs.problems)
    missing = sorted(set(linked.ids) - set(proofs.ids))
    assert not missing, (
        f"{len(missing)} check(s) linked to a fix have no test that breaks the real component, "
        'applies the fix and sees FIXED (mark it @pytest.mark.fixes("ID")):\n'
        + "\n".join(f"  {check_id} ({linked.ids[check_id][0]})" for check_id in missing)
    )


def test_every_fixes_id_names_a_linked_check() -> None:
    linked = _read(CHECKS, linked_check_ids)
    proofs = _read(TESTS, fixes_ids)
    unknown = sorted(set(proofs.ids) - set(linked.ids))
    assert not unknown, "fixes names check ids linked to no fix in checks/:\n" + "\n".join(
        f"  {check_id} ({', '.join(map(str, proofs.ids[check_id]))})" for check_id in unknown
    )


def test_reader_sees_links_and_markers_and_refuses_what_it_cannot_read() -> None:
    checks = linked_check_ids(
        textwrap.dedent(
            """
            @check("A-001", Severity.HIGH, remediation=services.restart_service)
            def test_a(): ...

            @check("A-002", Severity.LOW)
            def test_b(): ...
            """
        ),
        REPO / "checks" / "example.py",
    )
    assert {key: [str(s) for s in sites] for key, sites in checks.ids.items()} == {
        "A-001": ["checks/example.py:2"]
    }
    proofs = fixes_ids(
        textwrap.dedent(
            """
            import pytest

            pytestmark = [pytest.mark.sandbox, pytest.mark.fixes("M-001")]

            @pytest.mark.fixes("F-001", "F-002")
            def test_function(): ...

            @pytest.mark.parametrize("x", [pytest.param(1, marks=pytest.mark.fixes("P-001"))])
            def test_params(x): ...

            @pytest.mark.fixes
            def test_bare(): ...

            def test_in_a_body():
                pytest.mark.fixes("X-002")
            """
        ),
        REPO / "tests" / "example.py",
    )
    assert sorted(proofs.ids) == ["F-001", "F-002", "M-001", "P-001"]
    assert proofs.problems == [
        "tests/example.py:12: @pytest.mark.fixes needs ids",
        "tests/example.py:16: a fixes marker that marks no test",
    ]
