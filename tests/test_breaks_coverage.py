"""Every check id has a test that breaks the real component it guards and sees it fail.

Read statically with `ast`, without importing a check or loading an inventory: the ids are
the first argument of each `@check("ID", ...)` in checks/*.py; the proofs are the
`pytest.mark.breaks("ID", ...)` markers in tests/*.py, on a test function or class, in a
module's `pytestmark`, or in `pytest.param(..., marks=...)`.

What cannot be installed here is broken as a stand-in that answers as the real one does, and
its test says so in its docstring: Grafana (OBS-003, SEC-040, SEC-041: a loopback server with
Grafana's answers) and Trivy (SEC-060: a `trivy` printing its report format). nginx's TLS
(SEC-032) is the sandbox's own listener (tests/test_sandbox_audit.py).
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHECKS = REPO / "checks"
TESTS = REPO / "tests"


@dataclass(frozen=True)
class Site:
    """Where something is written: file and line, as an editor takes them."""

    path: Path
    line: int

    def __str__(self) -> str:
        path = self.path.relative_to(REPO) if self.path.is_relative_to(REPO) else self.path
        return f"{path}:{self.line}"


@dataclass
class Found:
    """What one file says: check ids or breaks ids (each with where), and what cannot be read."""

    ids: dict[str, list[Site]]
    problems: list[str]


def _parse(source: str, path: Path) -> ast.Module:
    return ast.parse(source, filename=str(path))


def _name(node: ast.expr) -> str:
    """`pytest.mark.breaks` for that attribute chain, '' for anything that is not one."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _name(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    return ""


def _literal_ids(call: ast.Call, site: Site, what: str, problems: list[str]) -> list[str]:
    """The string arguments of a call; a problem for each one that is not a literal string."""
    ids = []
    for argument in call.args:
        if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
            ids.append(argument.value)
        else:
            problems.append(f"{site}: {what} takes literal ids, got {ast.unparse(argument)}")
    return ids


def check_ids(source: str, path: Path) -> Found:
    """The ids of the `@check("ID", ...)` decorators in a checks module."""
    found = Found({}, [])
    for node in ast.walk(_parse(source, path)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for decorator in node.decorator_list:
            if (
                not isinstance(decorator, ast.Call)
                or _name(decorator.func).rsplit(".", 1)[-1] != "check"
            ):
                continue
            site = Site(path, decorator.lineno)
            first = decorator.args[0] if decorator.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.ids.setdefault(first.value, []).append(site)
            else:
                found.problems.append(f"{site}: @check on {node.name} has no literal id first")
    return found


def _is_breaks(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and _name(node.func) == "pytest.mark.breaks"


def _marks_in(node: ast.expr) -> Iterator[ast.expr]:
    """The marks of a decorator list entry, a `pytestmark` value or a `marks=` value."""
    if isinstance(node, ast.List | ast.Tuple):
        yield from node.elts
    else:
        yield node


def _attached(tree: ast.Module) -> Iterator[ast.expr]:
    """Every mark that marks a test: on a function or class, in pytestmark, in pytest.param."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield from node.decorator_list
        elif isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "pytestmark" for target in node.targets
        ):
            yield from _marks_in(node.value)
        elif isinstance(node, ast.Call) and _name(node.func) == "pytest.param":
            for keyword in node.keywords:
                if keyword.arg == "marks":
                    yield from _marks_in(keyword.value)


def breaks_ids(source: str, path: Path) -> Found:
    """The ids of the `pytest.mark.breaks(...)` markers in a test module."""
    tree = _parse(source, path)
    found = Found({}, [])
    attached = {id(mark) for mark in _attached(tree)}
    for node in ast.walk(tree):
        if _is_breaks(node):
            assert isinstance(node, ast.Call)
            site = Site(path, node.lineno)
            if id(node) not in attached:
                found.problems.append(f"{site}: a breaks marker that marks no test")
                continue
            ids = _literal_ids(node, site, "breaks", found.problems)
            if not ids and not node.args:
                found.problems.append(f"{site}: breaks() names no check id")
            for check_id in ids:
                found.ids.setdefault(check_id, []).append(site)
        elif (
            isinstance(node, ast.Attribute)
            and _name(node) == "pytest.mark.breaks"
            and id(node) in attached
        ):
            found.problems.append(f"{Site(path, node.lineno)}: @pytest.mark.breaks needs ids")
    found.problems.sort(key=lambda problem: int(problem.split(":")[1]))  # in the file's order
    return found


def _merge(founds: list[Found]) -> Found:
    merged = Found({}, [])
    for found in founds:
        merged.problems += found.problems
        for key, sites in found.ids.items():
            merged.ids.setdefault(key, []).extend(sites)
    return merged


def _read(directory: Path, reader: Callable[[str, Path], Found]) -> Found:
    return _merge([reader(path.read_text(), path) for path in sorted(directory.rglob("*.py"))])


# The project itself


def test_every_check_id_has_a_test_that_breaks_it() -> None:
    checks = _read(CHECKS, check_ids)
    proofs = _read(TESTS, breaks_ids)
    assert len(checks.ids) > 50, f"read only {len(checks.ids)} check ids from {CHECKS}"
    assert not checks.problems, "\n".join(checks.problems)
    assert not proofs.problems, "\n".join(proofs.problems)
    missing = sorted(set(checks.ids) - set(proofs.ids))
    assert not missing, (
        f"{len(missing)} check id(s) have no test that breaks the real component and sees the "
        'check fail (mark it @pytest.mark.breaks("ID")):\n'
        + "\n".join(f"  {check_id} ({checks.ids[check_id][0]})" for check_id in missing)
    )


def test_every_breaks_id_names_a_check() -> None:
    checks = _read(CHECKS, check_ids)
    proofs = _read(TESTS, breaks_ids)
    unknown = sorted(set(proofs.ids) - set(checks.ids))
    assert not unknown, "breaks names check ids that no @check in checks/ defines:\n" + "\n".join(
        f"  {check_id} ({', '.join(map(str, proofs.ids[check_id]))})" for check_id in unknown
    )


def test_check_ids_are_unique() -> None:
    checks = _read(CHECKS, check_ids)
    twice = {key: sites for key, sites in checks.ids.items() if len(sites) > 1}
    assert not twice, "\n".join(f"{key}: {', '.join(map(str, s))}" for key, s in twice.items())


# The reader, on small sources: every place a marker can be written is seen


def _breaks(source: str) -> Found:
    return breaks_ids(textwrap.dedent(source), REPO / "tests" / "example.py")


def test_reader_sees_functions_classes_pytestmark_and_params() -> None:
    found = _breaks(
        """
        import pytest

        pytestmark = [pytest.mark.sandbox, pytest.mark.breaks("M-001")]

        @pytest.mark.breaks("F-001", "F-002")
        def test_function(): ...

        @pytest.mark.breaks("C-001")
        class TestClass:
            @pytest.mark.breaks("C-002")
            async def test_method(self): ...

        @pytest.mark.parametrize("x", [
            pytest.param(1, marks=pytest.mark.breaks("P-001")),
            pytest.param(2, marks=[pytest.mark.slow, pytest.mark.breaks("P-002")]),
            pytest.param(3),
        ])
        def test_params(x): ...
        """
    )
    assert found.problems == []
    assert sorted(found.ids) == ["C-001", "C-002", "F-001", "F-002", "M-001", "P-001", "P-002"]
    assert str(found.ids["F-001"][0]) == "tests/example.py:6"


def test_reader_refuses_what_it_cannot_read() -> None:
    found = _breaks(
        """
        import pytest

        ID = "X-001"

        @pytest.mark.breaks(ID)
        def test_variable(): ...

        @pytest.mark.breaks()
        def test_empty(): ...

        @pytest.mark.breaks
        def test_bare(): ...

        def test_in_a_body():
            pytest.mark.breaks("X-002")
        """
    )
    assert found.ids == {}
    assert found.problems == [
        "tests/example.py:6: breaks takes literal ids, got ID",
        "tests/example.py:9: breaks() names no check id",
        "tests/example.py:12: @pytest.mark.breaks needs ids",
        "tests/example.py:16: a breaks marker that marks no test",
    ]


def test_reader_takes_the_first_argument_of_check() -> None:
    source = textwrap.dedent(
        """
        from opsbook import Severity, check

        @check("A-001", Severity.HIGH, remediation=fix)
        def test_a(): ...

        @opsbook.check("A-002", Severity.LOW)
        def test_b(): ...

        @pytest.fixture
        def not_a_check(): ...
        """
    )
    found = check_ids(source, REPO / "checks" / "example.py")
    assert found.problems == []
    assert {key: [str(s) for s in sites] for key, sites in found.ids.items()} == {
        "A-001": ["checks/example.py:4"],
        "A-002": ["checks/example.py:7"],
    }
