"""The import graph, read statically with `ast`: no cycle, and the sandbox apart from production.

Every import counts, at module level or inside a function (a function-level import that only
breaks a cycle at run time still is one), and so do imports under `if TYPE_CHECKING:`.
Production code (opsbook, with the checkout's checks/, remediation/ and fixtures/ inside its
namespace, and chatapp) never imports opsbook.sandbox;
the one production-side module that drives the sandbox, opsbook.remediate.sandbox_runtime, is
itself imported by nobody: opsbook.remediate.runtime loads it by name, as opsbook.cli loads the
sandbox's command. chatapp, the reference application, imports nothing of opsbook, so that its
container image carries none of opsbook's files. No module reads the environment at import.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("opsbook", "chatapp", "remediation", "fixtures", "checks")
# Top-level folders of the checkout that are installed inside the opsbook namespace (the symlinks
# opsbook/checks, opsbook/remediation and opsbook/fixtures point at them).
IN_OPSBOOK = {"remediation", "fixtures", "checks"}
SANDBOX = "opsbook.sandbox"
SANDBOX_RUNTIME = "opsbook.remediate.sandbox_runtime"
# Modules loaded by name only (nothing may import them), and the registries that name them.
LOADED_BY_NAME = {
    SANDBOX_RUNTIME: ("opsbook.remediate.runtime", "RUNTIME_MODULES"),
    "opsbook.sandbox.command": ("opsbook.cli", "SANDBOX_COMMAND"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    if parts[0] in IN_OPSBOOK:
        parts.insert(0, "opsbook")
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.resolve() == path.absolute():  # each file once, under its real folder
                found[_module_name(path)] = path
    return found


SOURCES = _sources()


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _imported(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """(module imported, line) for every import statement anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                # `from package import module` imports the module; `from m import name` m.
                yield (submodule if submodule in SOURCES else base), node.lineno


def _graph() -> dict[str, dict[str, int]]:
    """{module: {internal module it imports: first line}}."""
    graph: dict[str, dict[str, int]] = {}
    for module, path in SOURCES.items():
        edges = graph.setdefault(module, {})
        for target, line in _imported(module, path):
            if target in SOURCES and target != module:
                edges.setdefault(target, line)
    return graph


GRAPH = _graph()


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _shown(component: list[str]) -> str:
    inside = set(component)
    lines = [
        f"{source} -> {target} ({SOURCES[source].relative_to(ROOT)}:{line})"
        for source in component
        for target, line in sorted(GRAPH[source].items())
        if target in inside
    ]
    return "\n  ".join(lines)


def test_the_walk_sees_the_imports_it_must_judge() -> None:
    # Guards the test itself: a walk that found nothing would pass every rule below.
    assert "opsbook.sandbox.stack" in GRAPH["opsbook.sandbox.command"]
    assert "opsbook.sandbox.stack" in GRAPH[SANDBOX_RUNTIME]
    assert "opsbook.backup.tools" in GRAPH["opsbook.backup.take"]
    assert _cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [
        ["a", "b", "c"]
    ]


def test_no_import_cycle() -> None:
    cycles = _cycles(GRAPH)
    assert not cycles, "import cycles:\n  " + "\n\n  ".join(_shown(c) for c in cycles)


def test_production_code_never_imports_the_sandbox() -> None:
    offending = [
        f"{SOURCES[source].relative_to(ROOT)}:{line} imports {target}"
        for source, edges in sorted(GRAPH.items())
        if not _within(source, SANDBOX) and source != SANDBOX_RUNTIME
        for target, line in sorted(edges.items())
        if _within(target, SANDBOX)
    ]
    assert not offending, "\n".join(offending)


@pytest.mark.parametrize("module", sorted(LOADED_BY_NAME))
def test_modules_loaded_by_name_are_imported_by_nobody(module: str) -> None:
    importers = [source for source, edges in GRAPH.items() if module in edges]
    assert not importers, f"{module} is imported by {', '.join(sorted(importers))}"
    registry_module, registry = LOADED_BY_NAME[module]
    value = getattr(importlib.import_module(registry_module), registry)
    named = set(value.values()) if isinstance(value, dict) else {value}
    assert module in named, f"{registry_module}.{registry} does not name {module}"


def test_the_sandbox_runtime_is_a_runtime() -> None:
    from opsbook.remediate.runtime import RUNTIME_MODULES

    for name, module in RUNTIME_MODULES.items():
        loaded = importlib.import_module(module)
        assert callable(getattr(loaded, "runtime", None)), f"{name}: {module} has no runtime()"


def test_chatapp_imports_nothing_of_opsbook() -> None:
    offending = [
        f"{SOURCES[source].relative_to(ROOT)} imports {target}"
        for source, path in sorted(SOURCES.items())
        if _within(source, "chatapp")
        for target, _ in _imported(source, path)
        if not _within(target, "chatapp") and target.split(".")[0] in PACKAGES
    ]
    assert not offending, "\n".join(offending)


def _import_time_nodes(tree: ast.Module) -> Iterator[ast.AST]:
    """The nodes that run when the module is imported: all but the bodies of functions."""
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        yield node
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            # Decorators and default values run at import; the body does not.
            pending.extend(node.decorator_list)
            pending.extend(node.args.defaults)
            pending.extend(d for d in node.args.kw_defaults if d is not None)
        elif isinstance(node, ast.Lambda):
            pending.extend(node.args.defaults)
        else:
            pending.extend(ast.iter_child_nodes(node))


def test_no_module_reads_the_environment_at_import() -> None:
    offending = []
    for module, path in sorted(SOURCES.items()):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in _import_time_nodes(tree):
            name = node.attr if isinstance(node, ast.Attribute) else None
            if name in ("environ", "getenv", "environb"):
                where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
                offending.append(f"{where} ({module}) reads os.{name} at import")
    assert not offending, "\n".join(offending)
