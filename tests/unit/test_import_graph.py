"""The package's import graph: no cycles (function-level imports included) and no use of another module's
private names (``from x import _name`` or ``x._name`` across modules).

Imports under ``if TYPE_CHECKING:`` are not edges (they never run). ``components/`` and ``pipelines/`` are
checked too: they may import clinrisk, never the reverse.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOTS = {
    "clinrisk": REPO / "src" / "clinrisk",
    "components": REPO / "components",
    "pipelines": REPO / "pipelines",
}


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pkg, root in ROOTS.items():
        for f in root.rglob("*.py"):
            parts = [pkg, *f.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _walk_runtime(node: ast.AST) -> Iterator[ast.AST]:
    """Every node except the bodies of ``if TYPE_CHECKING:`` blocks."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for other in child.orelse:
                yield other
                yield from _walk_runtime(other)
            continue
        yield child
        yield from _walk_runtime(child)


def _package_of(name: str) -> str:
    return name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]


def _imports(name: str) -> Iterator[tuple[str, list[str], int]]:
    """(imported module, imported names, line) for every runtime import of a project module."""
    tree = ast.parse(MODULES[name].read_text())
    for node in _walk_runtime(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = _package_of(name).split(".")
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join([*pkg, base] if base else pkg)
            yield base, [a.name for a in node.names], node.lineno


def _edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for m in MODULES:
        for target, names, _ in _imports(m):
            hits = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            if target in MODULES and (not hits or len(hits) < len(names)):
                hits.append(target)
            for h in hits:
                # A package's __init__ importing its own submodules is how packages work, not a cycle.
                if h != m and not (m == h.rpartition(".")[0] and MODULES[m].name == "__init__.py"):
                    graph[m].add(h)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_function_level_imports() -> None:
    graph = _edges()
    assert "clinrisk.datacache" in graph["clinrisk.steps"]  # imported inside step functions only


def test_no_import_cycles() -> None:
    assert _cycles(_edges()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_layers_point_one_way() -> None:
    """The library never imports the KFP components or the pipeline definition (only the runner does:
    it compiles and runs the pipeline)."""
    graph = _edges()
    for m, targets in graph.items():
        if m.startswith("clinrisk") and m != "clinrisk.pipeline_runner":
            assert not {t for t in targets if t.startswith(("components", "pipelines"))}, m


def test_no_private_names_across_modules() -> None:
    bad: list[str] = []
    for m in MODULES:
        tree = ast.parse(MODULES[m].read_text())
        module_aliases: dict[str, str] = {}
        for target, names, line in _imports(m):
            for n in names:
                if n.startswith("_") and not n.startswith("__") and target != m:
                    bad.append(f"{MODULES[m].relative_to(REPO)}:{line}: from {target} import {n}")
                if f"{target}.{n}" in MODULES:
                    module_aliases[n] = f"{target}.{n}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in MODULES:
                        module_aliases[a.asname or a.name.split(".")[0]] = a.name
            elif isinstance(node, ast.ImportFrom):
                for a in node.names:
                    if a.asname and a.name in module_aliases:
                        module_aliases[a.asname] = module_aliases[a.name]
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in module_aliases
                and module_aliases[node.value.id] != m
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                bad.append(f"{MODULES[m].relative_to(REPO)}:{node.lineno}: {node.value.id}.{node.attr}")
    assert bad == []
