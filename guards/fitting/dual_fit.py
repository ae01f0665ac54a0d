"""Fitting the dual guard (harmlens.guards.latent.variants.dual): a t_inst centroid fit and a span-mlp fit on the same
split, their parts scaled on held-out harmless prompts, and α calibrated so the target FPR holds on each of several
harmless sources (plain held-out prompts, the same wrapped in the fit wrappers, optionally shipped XSTest-safe ones).

Roles: harmful → fit / selection; harmless → fit / selection (layer window, part scales) / calibration (α alone),
as the single-part fits split them (harmlens.guards.fitting.splits).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from harmlens.errors import HarmlensError
from harmlens.guards.fitting.fit import fit_tinst_guard
from harmlens.guards.fitting.scales import scales_from
from harmlens.guards.fitting.span_fit import default_wrappers, fit_span_guard, wrapper_groups
from harmlens.guards.fitting.splits import calibration_split, check_set, hold_out, prompt_roles
from harmlens.guards.latent.calibration import auroc, calibration_record, threshold_for_fpr
from harmlens.guards.latent.mlp_probe import MLP_KEYS
from harmlens.guards.latent.variants.centroid import CentroidConfig
from harmlens.guards.latent.variants.dual import DualConfig
from harmlens.guards.latent.variants.span_mlp import SpanMLPConfig
from harmlens.io import model_signature

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

XSTEST_FILE = Path(__file__).resolve().parents[1] / "data" / "xstest_safe.json"
XSTEST_EVAL = 125  # the shipped evaluation sets read XSTest-safe prompts from the front; calibration takes the rest


def xstest_calibration() -> list[str]:
    """Shipped XSTest-safe prompts kept for calibration (indices ≥ XSTEST_EVAL; guards/data, CC BY 4.0)."""
    rows = json.loads(XSTEST_FILE.read_text(encoding="utf-8"))
    return [r["instruction"] for r in rows[XSTEST_EVAL:]]


def wrap_in(groups: list, prompts: Sequence[str]) -> list[str]:
    """Each prompt wrapped once, alternating wrapper groups and cycling the jailbreaks of each."""
    out = []
    for i, p in enumerate(prompts):
        group = groups[i % len(groups)]
        out.append(group[(i // len(groups)) % len(group)](p, seed=i))
    return out


def part_scores(guard, prompts: Sequence[str], batch_size: int) -> dict[str, torch.Tensor]:
    """Raw score of each part of a dual guard on these prompts {part: [n]}."""
    rendered = [guard.prepare(p)[0] for p in prompts]
    chunks = [
        guard.scorer.parts(guard.read(rendered[s : s + batch_size]).float().cpu())
        for s in range(0, len(rendered), batch_size)
    ]
    return {k: torch.cat([c[k][0] for c in chunks]) for k in chunks[0]}


def _merge(t_guard, s_guard) -> tuple[list[int], dict[str, torch.Tensor]]:
    """Union layers and per-layer tensors over them (t_inst fit's rows where it has them, else the span fit's)."""
    t_layers, s_layers = t_guard.layers, s_guard.layers
    layers = sorted(set(t_layers) | set(s_layers))

    def union(key: str) -> torch.Tensor:
        rows = [
            t_guard.tensors[key][t_layers.index(x)] if x in t_layers else s_guard.tensors[key][s_layers.index(x)]
            for x in layers
        ]
        return torch.stack(rows)

    tensors = {k: union(k) for k in ("harmful", "harmless", "refuse", "accept")}
    tensors |= {f"span_{k}": s_guard.tensors[k] for k in MLP_KEYS}
    return layers, tensors


def fit_dual_guard(
    make_guard: Callable[[dict, dict], Any],
    model: TransformerBridge,
    harmful: Sequence[str],
    harmless: Sequence[str],
    config: DualConfig,
    *,
    val_harmful: Sequence[str] | None = None,
    val_harmless: Sequence[str] | None = None,
    progress: bool = False,
):
    """A dual guard (see LatentGuard.fit and DualConfig); `make_guard(tensors, metadata)` builds it."""
    if not isinstance(config, DualConfig):
        raise HarmlensError(f"fit_dual_guard fits the dual variant, not {config.variant!r}")
    harmful, harmless = check_set("harmful", harmful), check_set("harmless", harmless)
    if any(not isinstance(p, str) for p in harmful + harmless):
        raise HarmlensError("a dual guard is fitted on plain-text prompts (its span part wraps them itself)")
    rng, given = random.Random(config.seed), val_harmful is not None or val_harmless is not None
    harmful, harmless, val_harmful, val_harmless = hold_out(
        harmful, harmless, val_harmful, val_harmless, val_fraction=config.val_fraction, rng=rng, target_fpr=0.05
    )
    harmless, selection, cal = calibration_split(harmless, val_harmless, given, config.val_fraction, rng)
    shared: dict[str, Any] = dict(balance=config.balance, system=config.system, seed=config.seed)
    val: dict[str, Any] = {"val_harmful": val_harmful, "val_harmless": selection, "progress": progress}
    t_guard = fit_tinst_guard(
        make_guard, model, harmful, harmless, CentroidConfig(layers=config.layers, **shared), **val
    )
    span_config = SpanMLPConfig(
        wrappers=config.wrappers,
        negatives_per_prompt=config.negatives_per_prompt,
        batch_size=config.batch_size,
        mlp=config.mlp,
        **shared,
    )
    s_guard = fit_span_guard(make_guard, model, harmful, harmless, span_config, **val)
    layers, tensors = _merge(t_guard, s_guard)
    fit = {
        "n_harmful": len(harmful),
        "n_harmless": len(harmless),
        "parts": {"t_inst": t_guard.metadata["fit"], "span": s_guard.metadata["fit"]},
        "wrappers": s_guard.metadata["fit"]["wrappers"],
    }
    meta = {
        **{k: s_guard.metadata[k] for k in ("format", "version", "mlp")},
        **model_signature(model),
        "variant": DualConfig.variant,
        "method": DualConfig.method,
        "position": "span",
        "token_probe": "mlp",
        "layers": layers,
        "parts": {"t_inst": t_guard.layers, "span": s_guard.layers},
        "scales": {"t_inst": [0.0, 1.0], "span": [0.0, 1.0]},
        "corroborate": config.corroborate,
        "alpha": 0.0,
        "alpha_refuse": 0.0,
        "target_fpr": config.target_fpr,
        "system": config.system,
        "config": config.to_dict(),
        "fit": fit,
    }
    guard = make_guard(tensors, meta)
    bs = config.batch_size
    guard.metadata["scales"] = scales_from([{k: (v, v[:, None]) for k, v in part_scores(guard, selection, bs).items()}])
    val_scores = [v.score for v in guard.check(list(val_harmful or []) + list(selection))]
    n_val = len(val_harmful or [])
    fit["val_auroc"] = auroc(torch.tensor(val_scores[:n_val]), torch.tensor(val_scores[n_val:]))
    if config.target_fpr is not None:
        calibrate(
            guard,
            config,
            cal,
            wrapper_groups(default_wrappers(config.seed) if config.wrappers == "default" else config.wrappers),
        )
    fit["prompt_roles"] = prompt_roles(
        (harmful, harmless), (val_harmful or [], selection), cal if config.target_fpr is not None else None
    )
    return guard


def calibrate(guard, config: DualConfig, cal: list[str], groups: list) -> float:
    """α = the largest of the conformal thresholds at target_fpr on each source in config.calibrate_on; returns α."""
    target = float(config.target_fpr)  # type: ignore[arg-type]
    sources = {"plain": cal, "wrapped": wrap_in(groups, cal) if groups else [], "xstest": xstest_calibration()}
    per_source: dict[str, dict[str, Any]] = {}
    for name in config.calibrate_on:
        if sources[name]:
            scores = torch.tensor([v.score for v in guard.check(sources[name])])
            per_source[name] = {"n": len(scores), "alpha": threshold_for_fpr(scores, target)}
    guard.alpha = max(float(s["alpha"]) for s in per_source.values())
    refuse = torch.tensor([v.score for v in guard.refusal_guard().check(cal)])
    guard.metadata["alpha_refuse"] = threshold_for_fpr(refuse, target)
    n = min(int(s["n"]) for s in per_source.values())
    guard.metadata["fit"]["calibration"] = calibration_record(n, target)
    guard.metadata["fit"]["calibration_sources"] = per_source
    return guard.alpha
