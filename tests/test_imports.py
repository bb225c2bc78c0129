"""The import graph of dyno's own modules (STYLE.md §9, "parts that don't reach back").

``dyno.node`` is the composition root: it builds the parts and hands each the few
callables it needs, so no part imports it back, and no two modules import each other
round a cycle. Every import counts, at the top of a module or inside a function (a
function-level import is a cycle put off until run time, not one avoided); imports
under ``if TYPE_CHECKING:`` do not, since they never run.

The graph is read from the source with ``ast``, nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dyno

PACKAGE = "dyno"
PACKAGE_DIR = Path(dyno.__file__).parent
ROOT = "dyno.node"
# The command line starts a node (``dyno start``), and with ``workers: N`` dyno.workers
# starts the node's processes (a supervisor's node and each worker's): its only callers.
ROOT_CALLERS = {"dyno.cli", "dyno.workers"}


def package_modules(directory: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Every module of the package by dotted name (the package itself for __init__)."""
    modules = {}
    for path in sorted(directory.rglob("*.py")):
        parts = path.relative_to(directory).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join((PACKAGE, *parts))] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(tree: ast.AST):
    """Every node of ``tree`` but those under ``if TYPE_CHECKING:`` (its ``else`` counts)."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield other
                yield from _statements(other)
            continue
        yield child
        yield from _statements(child)


def imports_of(source: str, module: str, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``module``'s ``source`` imports, at any depth.
    ``from dyno import x`` imports ``dyno.x`` when that is a module, else ``dyno``;
    ``from dyno.x import y`` imports ``dyno.x`` (or ``dyno.x.y`` if that is a module)."""
    is_package = module == PACKAGE or f"{module}.__init__" in known
    found: set[str] = set()
    for node in _statements(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target != PACKAGE and not target.startswith(PACKAGE + "."):
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                found.add(submodule if submodule in known else target)
    return {name for name in found if name in known and name != module}


def import_graph(modules: dict[str, Path] | None = None) -> dict[str, set[str]]:
    modules = package_modules() if modules is None else modules
    known = set(modules)
    return {name: imports_of(path.read_text(), name, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that starts and ends at the same module, or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        colour[name] = GREY
        stack.append(name)
        for target in sorted(graph.get(name, ())):
            if colour.get(target, BLACK) == GREY:
                return stack[stack.index(target):] + [target]
            if colour.get(target) == WHITE:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        colour[name] = BLACK
        return None

    for name in sorted(graph):
        if colour[name] == WHITE:
            cycle = visit(name)
            if cycle:
                return cycle
    return None


# -- the reader itself, on small sources: it must see what it claims to see -------------------

KNOWN = {"dyno", "dyno.node", "dyno.peer", "dyno.resp", "dyno.states"}


@pytest.mark.parametrize("source, expected", [
    ("import dyno.node", {"dyno.node"}),
    ("from dyno import node, resp", {"dyno.node", "dyno.resp"}),
    ("from dyno import __version__", {"dyno"}),
    ("from dyno.node import Node", {"dyno.node"}),
    ("def f():\n    from dyno.node import STANDBY\n", {"dyno.node"}),
    ("class C:\n    def m(self):\n        import dyno.resp\n", {"dyno.resp"}),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from dyno.node import Node\n", set()),
    ("import typing\nif typing.TYPE_CHECKING:\n    import dyno.node\nelse:\n    import dyno.resp\n",
     {"dyno.resp"}),
    ("from . import node\nfrom .states import NORMAL\n", {"dyno.node", "dyno.states"}),
    ("import trio\nfrom msgpack import packb\n", set()),
], ids=["import", "from-package", "from-package-name", "from-module", "in-function", "in-method",
        "type-checking", "type-checking-else", "relative", "third-party"])
def test_the_reader_sees_every_import_that_runs(source, expected):
    assert imports_of(source, "dyno.peer", KNOWN) == expected


def test_find_cycle_names_the_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


# -- dyno's own graph ---------------------------------------------------------------------------


def test_the_package_is_read_whole():
    graph = import_graph()
    assert {"dyno.node", "dyno.peer", "dyno.coordinator", "dyno.states"} <= set(graph)
    assert "dyno.peer" in graph["dyno.node"]  # the root imports its parts


def test_no_cycle_among_dyno_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_part_imports_the_node():
    graph = import_graph()
    importers = sorted(name for name, targets in graph.items() if ROOT in targets and name not in ROOT_CALLERS)
    assert not importers, f"{', '.join(importers)} import {ROOT}; hand them callables instead (STYLE.md §9)"
