"""guards/latent imports itself one way: no cycles and no function-level imports between its modules (AST walk)."""

from __future__ import annotations

import ast
from graphlib import TopologicalSorter
from pathlib import Path

import harmlens.guards.latent as latent

PKG = "harmlens.guards.latent"
ROOT = Path(latent.__file__).parent


def _targets(node: ast.AST, modules: set[str]) -> list[str]:
    names: list[str] = []
    if isinstance(node, ast.ImportFrom) and node.module:
        if node.module == PKG:
            names = [a.name for a in node.names]
        elif node.module.startswith(PKG + "."):
            names = [node.module[len(PKG) + 1 :].split(".")[0]]
    elif isinstance(node, ast.Import):
        names = [a.name[len(PKG) + 1 :].split(".")[0] for a in node.names if a.name.startswith(PKG + ".")]
    return [n for n in names if n in modules]


def import_edges() -> dict[str, dict[str, set[str]]]:
    """{module: {imported module: kinds}}, kinds among 'module', 'function' and 'type-only' (if TYPE_CHECKING)."""
    modules = {p.stem for p in ROOT.glob("*.py")}
    edges: dict[str, dict[str, set[str]]] = {m: {} for m in modules}

    def walk(node: ast.AST, module: str, kind: str) -> None:
        for child in ast.iter_child_nodes(node):
            k = "function" if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) else kind
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                k = "type-only"
            for target in _targets(child, modules):
                if target != module:
                    edges[module].setdefault(target, set()).add(k)
            walk(child, module, k)

    for module in modules:
        walk(ast.parse((ROOT / f"{module}.py").read_text()), module, "module")
    return edges


def test_latent_imports_are_one_way_and_small():
    edges = import_edges()
    assert edges["guard"]["fit"] == {"module"} and "guard" not in edges["fit"]  # the walk sees real edges
    runtime = {m: {t for t, kinds in e.items() if kinds - {"type-only"}} for m, e in edges.items()}
    order = list(TopologicalSorter(runtime).static_order())  # CycleError on any import circle
    assert order.index("configs") < order.index("guard") and order.index("verdict") < order.index("guard")
    assert [(m, t) for m, e in edges.items() for t, kinds in e.items() if "function" in kinds] == []
    type_only = {m: t for m, e in edges.items() for t, kinds in e.items() if kinds == {"type-only"}}
    assert type_only == {"guarded": "guard", "guard_read": "guard"}  # the guard's type in the adapters' signatures
    assert all(len((ROOT / f"{m}.py").read_text().splitlines()) < 300 for m in edges)
