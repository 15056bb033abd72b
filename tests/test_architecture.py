"""Layering rules checked on the source (ast only, nothing imported): no import cycles, and each
heavy or risky dependency (web framework, Ray, SQLite) used in one package only."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "scalerec"

#: third-party (or stdlib) top-level module -> the only package of ours allowed to import it
CONFINED = {
    "fastapi": "scalerec.serving.http",
    "starlette": "scalerec.serving.http",
    "ray": "scalerec.cluster",
    "sqlite3": "scalerec.data.catalog",
    "psycopg": "scalerec.data.catalog",
    "psycopg_pool": "scalerec.data.catalog",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(source: str, module: str, is_package: bool) -> list[tuple[str, int]]:
    """Every module ``module`` imports, anywhere in its body (functions too), with the line.

    ``if TYPE_CHECKING:`` bodies are skipped (never run); ``from pkg import name`` counts as an
    import of ``pkg.name`` when that is a module, else of ``pkg``. Names are absolute.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit_node(other)
                continue
            visit_node(child)

    def visit_node(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.append((f"{base}.{alias.name}", node.lineno))
        visit(node)

    visit(ast.parse(source))
    return found


def _own(name: str, known: dict[str, Path]) -> str | None:
    """The module of ours that importing ``name`` loads (longest known prefix), if any."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


@cache
def graph() -> dict[str, dict[str, int]]:
    """module -> {imported module of ours: first line}."""
    known = modules()
    edges: dict[str, dict[str, int]] = {}
    for name, path in known.items():
        out: dict[str, int] = {}
        for target, line in imports_of(path.read_text(), name, path.name == "__init__.py"):
            own = _own(target, known)
            if own is not None and own != name:
                out.setdefault(own, line)
        edges[name] = out
    return edges


def find_cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges.get(child, {}))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def _describe(cycle: list[str], edges: dict[str, dict[str, int]]) -> str:
    inside = set(cycle)
    links = [f"{a} -> {b} (line {line})" for a in cycle for b, line in edges[a].items() if b in inside]
    return "; ".join(links)


def test_the_checker_sees_imports_in_functions_and_skips_type_checking() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from scalerec.b import X\n"
        "def f():\n    from scalerec.c import Y\n    import scalerec.d\n"
        "from . import e\n"
    )
    found = {name for name, _ in imports_of(source, "scalerec.a", False)}
    assert {"scalerec.c.Y", "scalerec.d", "scalerec.e"} <= found
    assert not any(name.startswith("scalerec.b") for name in found)


def test_the_cycle_finder_finds_a_cycle() -> None:
    edges = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}
    assert find_cycles(edges) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b": 1}, "b": {}}) == []


def test_no_import_cycles() -> None:
    edges = graph()
    assert len(edges) > 20, "the source tree was not found"
    cycles = find_cycles(edges)
    assert not cycles, "import cycles: " + " | ".join(_describe(c, edges) for c in cycles)


@pytest.mark.parametrize("library", sorted(CONFINED))
def test_library_is_confined_to_its_package(library: str) -> None:
    home = CONFINED[library]
    offenders = []
    for name, path in modules().items():
        if name == home or name.startswith(home + "."):
            continue
        for target, line in imports_of(path.read_text(), name, path.name == "__init__.py"):
            if target == library or target.startswith(library + "."):
                offenders.append(f"{path.relative_to(SRC)}:{line}")
    assert not offenders, f"{library} is imported outside {home}: {', '.join(offenders)}"
