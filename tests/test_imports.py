"""The import graph of the product's packages: no module imports another that imports it back,
lazy (function-local) and type-checking imports included.

    .venv/bin/python -m pytest tests/test_imports.py -q

The graph is read from the source (every `import` statement anywhere in a module), not from
sys.modules after an import, so that an import hidden in a function counts as much as one at the
top of the file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("trainer", "data_pipeline", "evaluation")
# Cycles still to be removed (each a set of modules importing each other); a new one fails.
KNOWN_CYCLES = [
    {"trainer.config.recipe", "trainer.distill.kinds", "trainer.distill.objectives"},
    {"data_pipeline.demo.knowledge", "data_pipeline.demo.synth"},
]


def module_files() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """{module: the product's modules it imports anywhere in its source}."""
    files = module_files()
    graph = {}
    for name, path in files.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m in files and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_walk_finds_a_cycle_through_a_function_local_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [{"a", "b", "c"}]
    assert cycles({"a": {"b"}, "b": set()}) == []
    tree = ast.parse("def f():\n    from trainer.checkpoint.elastic import restore\n")
    assert any(isinstance(n, ast.ImportFrom) for n in ast.walk(tree))  # walked, not only the top


def test_no_new_import_cycles():
    new = [c for c in cycles(import_graph()) if c not in KNOWN_CYCLES]
    assert not new, f"modules that import each other: {new}"


@pytest.mark.parametrize(
    ("user", "used"),
    [
        ("trainer.checkpoint.elastic", "trainer.checkpoint.store"),
        ("data_pipeline.shards.writer", "data_pipeline.shards.journal"),
    ],
)
def test_one_way_dependencies(user, used):
    """The resume plan is made from the store's record and read by elastic resume; the shard
    journal saves the writer through its state() and restore() only."""
    graph = import_graph()
    assert used in graph[user]
    assert user not in graph[used]
