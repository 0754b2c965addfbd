"""The project's import graph: no import cycles (function-level imports count, they only hide a cycle), no
module using another module's private names, and layers that point one way (the library never imports the
KFP components or pipeline definitions).

Read statically with ``ast`` (nothing is imported). The graph covers the ``clinrisk`` package and the
top-level ``components`` and ``pipelines`` packages. A module's edges are every ``import clinrisk.x`` /
``from clinrisk.x import y`` anywhere in its body (``if TYPE_CHECKING:`` blocks excepted: they never run).
``from clinrisk import x`` is an edge to ``clinrisk.x`` when that is a module. A package's ``__init__`` is
the package's node; importing ``clinrisk.a.b`` also runs ``clinrisk.a`` (its ``__init__``), an edge too.
There is no allow-list: a cycle fails the test.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = "clinrisk"
# Top-level package -> its folder: the library and the two layers above it.
ROOTS = {PACKAGE: SRC / PACKAGE, "components": REPO / "components", "pipelines": REPO / "pipelines"}


def module_files(roots: dict[str, Path] = ROOTS) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the packages in ``roots``."""
    out: dict[str, Path] = {}
    for pkg, root in roots.items():
        for f in sorted(root.rglob("*.py")):
            parts = [pkg, *f.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


def _ours(name: str, modules: dict[str, Path]) -> bool:
    """Whether ``name`` is one of the graph's packages or inside one."""
    top = name.split(".", 1)[0]
    return top in modules or any(m.startswith(top + ".") for m in modules)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` but the bodies of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _resolve(module: str, is_pkg: bool, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def _with_parents(target: str, modules: dict[str, Path], importer: str) -> list[str]:
    """``clinrisk.a.b`` -> [clinrisk.a, clinrisk.a.b] (modules only). The root package, and the importer's
    own parent packages when they come only as the target's parents, are left out: those are initialised
    before the importer runs at all (naming one as the target itself still counts)."""
    own = {".".join(importer.split(".")[:i]) for i in range(1, importer.count(".") + 1)}
    parts = target.split(".")
    parents = [".".join(parts[:i]) for i in range(2, len(parts))]
    return [m for m in parents if m in modules and m not in own] + ([target] if target in modules else [])


def import_edges(modules: dict[str, Path]) -> tuple[dict[str, set[str]], list[str]]:
    """Module -> the package modules it imports; and the private-name uses across modules found."""
    edges: dict[str, set[str]] = {m: set() for m in modules}
    private: list[str] = []
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), str(path))
        aliases: dict[str, str] = {}  # local name -> module it names
        for node in _runtime_nodes(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name != PACKAGE and _ours(a.name, modules):
                        edges[mod].update(_with_parents(a.name, modules, mod))
                        if a.asname:
                            aliases[a.asname] = a.name
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(mod, is_pkg, node.level, node.module)
                if not target or not _ours(target, modules):
                    continue
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    if sub in modules:  # `from clinrisk.p import x`: the module x (p only as its parent)
                        edges[mod].update(_with_parents(sub, modules, mod))
                        aliases[a.asname or a.name] = sub
                        continue
                    edges[mod].update(_with_parents(target, modules, mod))
                    if a.name.startswith("_") and not a.name.startswith("__") and target != mod:
                        private.append(f"{mod}: from {target} import {a.name}")
        for node in _runtime_nodes(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and aliases[node.value.id] != mod
            ):
                private.append(f"{mod}: {aliases[node.value.id]}.{node.attr}")
        edges[mod].discard(mod)
    return edges, sorted(set(private))


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)


def test_the_graph_covers_the_layers() -> None:
    modules = module_files()
    assert {"clinrisk.cli.app", "components", "pipelines.training", "pipelines.segmentation"} <= set(modules)
    edges, _ = import_edges(modules)
    assert "clinrisk.datacache" in edges["clinrisk.steps"]  # imported inside step functions only
    assert "components" in edges["pipelines.training"]


def test_no_import_cycles() -> None:
    edges, _ = import_edges(module_files())
    found = cycles(edges)
    assert found == [], "import cycles (function-level imports included):\n" + "\n".join(
        " <-> ".join(c) for c in found
    )


def test_layers_point_one_way() -> None:
    """The library never imports the KFP components or the pipeline definitions; only the runner does (it
    compiles and runs a pipeline)."""
    edges, _ = import_edges(module_files())
    upward = {
        m: sorted(t for t in targets if t.split(".", 1)[0] in ("components", "pipelines"))
        for m, targets in edges.items()
        if m.split(".", 1)[0] == PACKAGE and m != "clinrisk.pipeline_runner"
    }
    assert {m: t for m, t in upward.items() if t} == {}


def test_the_cli_package_init_assembles_nothing() -> None:
    """Use-case CLIs import ``clinrisk.cli.common``, which runs ``clinrisk.cli``'s ``__init__`` first: the
    app that mounts them lives in ``clinrisk.cli.app``, and the shared CLI names no plugin module."""
    edges, _ = import_edges(module_files())
    assert edges["clinrisk.cli"] == set()
    assert not {
        t for t in edges["clinrisk.cli.app"] if t.startswith("clinrisk.usecases.") and t.count(".") > 2
    }


def test_no_private_names_across_modules() -> None:
    _, private = import_edges(module_files())
    assert private == [], "private names used outside their module:\n" + "\n".join(private)


# The checker itself must see what it claims to see.
def _graph(tmp_path: Path, files: dict[str, str]) -> tuple[dict[str, set[str]], list[str]]:
    mods = {}
    for name, text in files.items():
        f = tmp_path / (name.replace(".", "/") + ".py")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
        mods[name.removesuffix(".__init__")] = f
    return import_edges(mods)


@pytest.mark.parametrize(
    "a_src",
    [
        "import clinrisk.b\n",
        "def f():\n    from clinrisk.b import g\n",
        "def f():\n    from . import b\n",
    ],
)
def test_checker_sees_cycles_also_inside_functions(tmp_path: Path, a_src: str) -> None:
    edges, _ = _graph(
        tmp_path,
        {"clinrisk.__init__": "", "clinrisk.a": a_src, "clinrisk.b": "from clinrisk.a import x\n"},
    )
    assert cycles(edges) == [["clinrisk.a", "clinrisk.b"]]


def test_the_cycle_finder_finds_a_longer_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_checker_ignores_type_checking_imports(tmp_path: Path) -> None:
    edges, _ = _graph(
        tmp_path,
        {
            "clinrisk.__init__": "",
            "clinrisk.a": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from clinrisk.b import T\n",
            "clinrisk.b": "from clinrisk.a import x\n",
        },
    )
    assert cycles(edges) == []


def test_checker_sees_private_names(tmp_path: Path) -> None:
    _, private = _graph(
        tmp_path,
        {
            "clinrisk.__init__": "",
            "clinrisk.a": "from clinrisk.b import _hidden\nfrom clinrisk import b\nb._other()\n",
            "clinrisk.b": "def _hidden(): ...\ndef _other(): ...\n",
        },
    )
    assert private == ["clinrisk.a: clinrisk.b._other", "clinrisk.a: from clinrisk.b import _hidden"]
