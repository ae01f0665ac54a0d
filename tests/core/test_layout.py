"""The package layout's rules: one `harmlens` namespace, imports only downward, no import circles, small modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = {
    "harmlens": 0,
    "runtime": 1,
    "probes": 2,
    "attacks": 3,
    "guards": 4,
}  # a module imports its own layer or lower
LATENT_FORBIDDEN = (
    "harmlens.attacks",
    "harmlens.guards.fitting",
    "harmlens.guards.tuning",
    "harmlens.guards.organisms",
    "harmlens.guards.evaluation",
)
# The deployable guard's import closure (harmlens modules, source lines) a little above what it was when it was
# measured: 52 modules, 6,315 lines (2026-12-05: the dual variant and the runtime's step loop and sampling joined the
# 49 / 5,856 of 2026-12-04; 70 / 9,833 before fitting left guards/latent).
CLOSURE_BUDGET = (54, 6500)
CLOSURE = """
import sys
import harmlens.guards.latent
mods = sorted(m for m in sys.modules if m == "harmlens" or m.startswith("harmlens."))
lines = {m: len(open(sys.modules[m].__file__, encoding="utf-8").read().splitlines()) for m in mods}
print(len(mods), sum(lines.values()))
print(" ".join(m for m in mods if m.startswith(%r)))
"""


def _modules() -> dict[str, Path]:
    """Every library module by dotted name, read through the real folders (not the harmlens/ symlinks)."""
    out: dict[str, Path] = {}
    for top in ("harmlens", "probes", "attacks", "guards"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if top == "harmlens" and rel.parts[1] in ("probes", "attacks", "guards"):
                continue
            parts = list(rel.with_suffix("").parts)
            if top != "harmlens":
                parts.insert(0, "harmlens")
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """harmlens modules a file imports at run time, at module level or inside functions (not under TYPE_CHECKING)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []  # type-only imports never run
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found.update(n for n in names if n in MODULES)
    return found


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 and parts[1] in LAYERS else 0


def test_no_bare_top_level_packages_are_imported():
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                assert node.module.split(".")[0] not in ("probes", "attacks", "guards"), (path, node.module)


def test_concept_packages_reach_the_runtime_only_through_its_public_names():
    """probes, attacks and guards import `harmlens.runtime` itself (its __all__), never one of its modules."""
    public = set(__import__("harmlens.runtime", fromlist=["__all__"]).__all__)
    bad = []
    for module, path in MODULES.items():
        if _layer(module) < LAYERS["probes"]:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("harmlens.runtime"):
                if node.module != "harmlens.runtime":
                    bad.append((module, node.module))
                bad += [(module, a.name) for a in node.names if a.name not in public]
    assert not bad, bad


def test_imports_only_go_downward():
    upward = [(m, i) for m, deps in GRAPH.items() for i in deps if _layer(i) > _layer(m)]
    assert not upward, upward


def test_no_import_circles():
    """No strongly connected component of more than one module (Tarjan), counting function-level imports too."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w.startswith(v + "."):  # a package importing its own submodules in __init__ is no circle
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_deployable_guard_imports_no_attack_fitting_tuning_organism_or_evaluation_module():
    """`import harmlens.guards.latent` in a fresh interpreter loads none of those packages, within a module/line
    budget (printed: pytest -s shows it)."""
    out = subprocess.run(
        [sys.executable, "-c", CLOSURE % (LATENT_FORBIDDEN,)], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    n_modules, n_lines = map(int, out[0].split())
    print(f"deployable closure: {n_modules} harmlens modules, {n_lines} lines (budget {CLOSURE_BUDGET})")
    assert out[1:] == [""], f"the deployable guard imports {out[1]}"
    assert n_modules <= CLOSURE_BUDGET[0] and n_lines <= CLOSURE_BUDGET[1], (n_modules, n_lines)
    # statically too: every module under guards/latent, following module-level and function-level imports, except
    # LatentGuard.fit's lazy import of the fitting package
    seen, todo = set(), [m for m in MODULES if m.startswith("harmlens.guards.latent")]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(
                GRAPH[m] - {"harmlens.guards"} - {d for d in GRAPH[m] if d.startswith("harmlens.guards.fitting")}
            )
    assert not [m for m in seen if m.startswith(LATENT_FORBIDDEN)], sorted(seen)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name):
    assert len(MODULES[name].read_text(encoding="utf-8").splitlines()) <= 400, name


def test_examples_and_benchmarks_import_no_cli_module():
    """Examples and benchmarks talk to the library, never to a CLI module."""
    for folder in ("examples", "benchmarks"):
        for path in (ROOT / folder).glob("*.py"):
            for dep in _imports(path):
                assert ".cli." not in dep + "." and not dep.endswith("__main__"), (path.name, dep)


def test_importing_harmlens_has_no_side_effects():
    code = (
        "import matplotlib, harmlens.probes, harmlens.attacks, harmlens.guards\n"
        "from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge\n"
        "import sys; assert 'matplotlib.pyplot' not in sys.modules\n"
        "assert matplotlib.rcParams._get_backend_or_none() is None  # no backend chosen for the user\n"
        "assert not getattr(AttentionBridge._update_kv_cache, '_harmlens_compat', False)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
