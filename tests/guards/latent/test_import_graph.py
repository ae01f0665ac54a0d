"""guards/latent imports itself one way (no cycles, no function-level imports between its modules) and never, at
module level, the packages a deployment does not run: attacks, fitting, tuning, organisms, evaluation (AST walk)."""

from __future__ import annotations

import ast
from graphlib import TopologicalSorter
from pathlib import Path

import harmlens.guards.latent as latent

PKG = "harmlens.guards.latent"
ROOT = Path(latent.__file__).parent
NOT_AT_INFERENCE = tuple(
    f"harmlens.{p}" for p in ("attacks", "guards.fitting", "guards.tuning", "guards.organisms", "guards.evaluation")
)


def _name(path: Path) -> str:
    """'guard', 'variants', 'variants.centroid' for files under guards/latent."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


FILES = {_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imported(node: ast.AST) -> list[str]:
    """Absolute module names an import statement names (its module and, for `from m import x`, m.x)."""
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    return []


def import_edges() -> dict[str, dict[str, set[str]]]:
    """{module: {imported harmlens module: kinds}}, kinds among 'module', 'function' and 'type-only'."""
    edges: dict[str, dict[str, set[str]]] = {m: {} for m in FILES}

    def walk(node: ast.AST, module: str, kind: str) -> None:
        for child in ast.iter_child_nodes(node):
            k = "function" if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) else kind
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                k = "type-only"
            for target in _imported(child):
                if target.startswith("harmlens."):
                    edges[module].setdefault(target, set()).add(k)
            walk(child, module, k)

    for module, path in FILES.items():
        walk(ast.parse(path.read_text(encoding="utf-8")), module, "module")
    return edges


def _internal(target: str) -> str | None:
    """The guards/latent module an import names, if it names one."""
    if not target.startswith(PKG + "."):
        return None
    parts = target[len(PKG) + 1 :].split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in FILES:
            return ".".join(parts[:n])
    return None


def test_latent_imports_are_one_way_and_small():
    edges = import_edges()
    inner = {m: {_internal(t): k for t, k in e.items() if _internal(t) not in (None, m)} for m, e in edges.items()}
    assert inner["guard"]["registry"] == {"module"} and "guard" not in inner["registry"]  # the walk sees real edges
    runtime = {m: {t for t, kinds in e.items() if kinds - {"type-only"}} for m, e in inner.items()}
    order = list(TopologicalSorter(runtime).static_order())  # CycleError on any import circle
    assert order.index("registry") < order.index("guard") and order.index("verdict") < order.index("guard")
    assert order.index("variants") < order.index("configs")
    assert [(m, t) for m, e in inner.items() for t, kinds in e.items() if "function" in kinds] == []
    type_only = {m: t for m, e in inner.items() for t, kinds in e.items() if kinds == {"type-only"}}
    assert type_only == {"guarded": "guard", "guard_read": "guard"}  # the guard's type in the adapters' signatures
    assert all(len(p.read_text(encoding="utf-8").splitlines()) < 300 for p in FILES.values())


def test_latent_imports_no_fitting_attack_or_evaluation_code_at_module_level():
    """Only LatentGuard.fit reaches harmlens.guards.fitting, inside the method (the deployable closure)."""
    edges = import_edges()
    at_load = [(m, t) for m, e in edges.items() for t, kinds in e.items() if t.startswith(NOT_AT_INFERENCE)]
    assert [(m, t) for m, t in at_load if edges[m][t] - {"function", "type-only"}] == []
    assert sorted(at_load) == [
        ("guard", "harmlens.guards.fitting.fitters"),
        ("guard", "harmlens.guards.fitting.fitters.fit_guard"),
    ]


def test_each_built_in_variant_is_one_file_with_its_config_and_scorer():
    from harmlens.guards.latent.config_base import GuardConfig
    from harmlens.guards.latent.registry import get_variant, registered
    from harmlens.guards.latent.scorer import Scorer

    for name in registered():
        variant = get_variant(name)
        assert issubclass(variant.config, GuardConfig) and issubclass(variant.scorer, Scorer)
        assert variant.config.__module__ == variant.scorer.__module__, name  # one file per variant
        assert variant.config.__module__ == f"{PKG}.variants.{name.replace('-', '_')}"
