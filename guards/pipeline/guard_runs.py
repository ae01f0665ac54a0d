"""Latent Guard runs as library calls: summarise a fitted guard, evaluate it against baselines."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from harmlens.errors import HarmlensError
from harmlens.guards.evaluation.report import GuardReport
from harmlens.guards.latent.guard import LatentGuard
from harmlens.io import output_set

BASELINES = ("keyword", "perplexity", "delta_refuse", "behaviour")


def fit_summary(guard: LatentGuard, path: Path) -> dict:
    """What `fit` prints: the file, variant, method, read position, layers, alpha, calibration and validation AUROC."""
    fit = guard.metadata["fit"]
    return {
        "guard": str(path),
        "variant": guard.config.variant,
        "method": guard.method,
        "read": guard.position,
        "layers": guard.layers,
        "alpha": guard.alpha,
        "calibration": fit.get("calibration"),
        "val_auroc": fit.get("val_auroc"),
        "n_harmful": fit["n_harmful"],
        "n_harmless": fit["n_harmless"],
    }


def make_baselines(guard: LatentGuard, names: Sequence[str], calibrate: list[str] | None = None) -> list:
    """The named baseline detectors on the guard's model; perplexity calibrated at 5% FPR on `calibrate` if given."""
    from harmlens.guards.evaluation.baselines import BehaviourGuard, KeywordGuard, PerplexityGuard, refuse_detector

    make: dict[str, Callable[[], Any]] = {
        "keyword": KeywordGuard,
        "perplexity": lambda: PerplexityGuard(guard.model),
        "delta_refuse": lambda: refuse_detector(guard),
        "behaviour": lambda: BehaviourGuard(guard.model),
    }
    unknown = [b for b in names if b not in make]
    if unknown:
        raise HarmlensError(f"unknown baseline(s) {unknown}; choose from {', '.join(make)}")
    baselines = [make[b]() for b in names]
    for b in baselines:
        if calibrate and b.name == "perplexity":
            b.calibrate(calibrate, 0.05)
    return baselines


def evaluate_with_baselines(
    guard: LatentGuard,
    out: Path,
    *,
    sets: dict[str, tuple[list[str], bool]] | None = None,
    compare: dict[str, LatentGuard] | None = None,
    baselines: Sequence[str] = BASELINES,
    calibrate: list[str] | None = None,
    limit: int | None = None,
) -> GuardReport:
    """Score the guard, compared guards and baselines on `sets` (default: the shipped held-out and jailbreak sets,
    leaving out every compared guard's fit wrappers); write report.json, report.md and roc.png into `out`."""
    from harmlens.guards.evaluation.baselines import LatentDetector
    from harmlens.guards.evaluation.report import evaluate_guard

    compared = [LatentDetector(g, name) for name, g in (compare or {}).items()]
    if not sets:
        from harmlens.guards.evaluation.sets import fit_wrappers, shipped_sets

        exclude = set().union(*(fit_wrappers(g) for g in [guard] + [d.guard for d in compared]))
        sets = shipped_sets(guard.model, limit=limit, exclude=exclude)
    detectors = compared + make_baselines(guard, baselines, calibrate)
    report = evaluate_guard(guard, sets, baselines=detectors)
    with output_set(out) as tmp:  # report.json, report.md and roc.png replace the old ones together
        report.save(tmp)
    return report
