"""Fitting a LatentGuard: punctuation-balanced class centroids or per-layer probes, layer choice and α calibration."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from harmlens.errors import HarmlensError
from harmlens.guards.fitting.probe_training import train_probes
from harmlens.guards.fitting.splits import MIN_VAL, calibration_split, check_set, hold_out, prompt_roles
from harmlens.guards.latent.calibration import (
    CALIBRATION_RULES,
    auroc,
    calibration_record,
    flagged_allowed,
    fpr_bound,
    threshold_for_fpr,
)
from harmlens.guards.latent.config_base import GuardConfig
from harmlens.guards.latent.guard_file import FORMAT, VERSION
from harmlens.guards.latent.span_scoring import probe_scores
from harmlens.guards.latent.variants.centroid import centroid_margins
from harmlens.io import model_signature
from harmlens.probes.directions import data_hash
from harmlens.runtime import ChatPrompt, cache_resid, chat_format, check_layers, clean_instruction

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

_ENDINGS = ("", ".", "?")
__all__ = ["CALIBRATION_RULES", "auroc", "calibration_record", "flagged_allowed", "fpr_bound", "threshold_for_fpr"]
__all__ += ["MIN_VAL", "balanced_variants", "check_set", "fit_tinst_guard", "hold_out", "select_window"]
__all__ += ["train_probes"]


def balanced_variants(instruction: str) -> list[str]:
    """The instruction ending in a word, '.' and '?': t_inst is the last token, so classes get the same endings."""
    core = clean_instruction(instruction).rstrip(".?!;: ").rstrip()
    return [core + e for e in _ENDINGS] if core else [clean_instruction(instruction)]


def _acts(model, fmt, prompts, layers, batch_size, progress, what) -> torch.Tensor:
    """[n, n_layers, 2 (t_inst, t_post_inst), d] float32 on CPU."""
    rendered = []
    for i, p in enumerate(prompts):
        try:
            rendered.append(p if isinstance(p, ChatPrompt) else fmt.render(p))
        except HarmlensError as exc:
            raise HarmlensError(f"{what} prompt {i}: {exc}") from None
    order = sorted(range(len(rendered)), key=lambda i: len(rendered[i]))
    ordered = cache_resid(  # each batch leaves the model's device once, straight into its rows
        model,
        [rendered[i] for i in order],
        lambda p: (p.t_inst, p.t_post_inst),
        layers=layers,
        batch_size=batch_size,
        progress=what if progress else False,
    )
    acts = ordered[torch.tensor(order).argsort()]  # back to the caller's order
    if not torch.isfinite(acts).all():
        raise HarmlensError(f"non-finite activations (nan/inf) for {what} prompts: check the model's weights/dtype")
    return acts


def _params(method: str, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
    """Class centroids [n_layers, d] (both methods keep them), plus the probe weights for method='probe'."""
    params = {"harmful": pos.double().mean(0).float(), "harmless": neg.double().mean(0).float()}
    if not ((params["harmful"] - params["harmless"]).norm(dim=-1) > 0).all():
        raise HarmlensError("harmful and harmless centroids coincide at some layer: are the two sets the same?")
    return params | (train_probes(pos, neg) if method == "probe" else {})


def _per_layer(method: str, params: dict, acts: torch.Tensor) -> torch.Tensor:
    if method == "centroid":
        return centroid_margins(acts, params["harmful"], params["harmless"])[1]
    return probe_scores(params, acts)[1]


def candidate_windows(n_rows: int) -> list[tuple[int, int]]:
    """Contiguous row windows (start, end inclusive) on a grid of about ten points."""
    step = max(1, n_rows // 10)
    points = sorted(set(range(0, n_rows, step)) | {n_rows - 1})
    return [(s, e) for s in points for e in points if e >= s]


def select_window(val_pos: torch.Tensor, val_neg: torch.Tensor, tol: float = 0.005) -> tuple[tuple[int, int], list]:
    """Window of per-layer scores [n, rows] by held-out AUROC; within tol of the best, the widest (then earliest).

    Ties keep the paper's default (every layer) unless the held-out data show a narrower window is better.
    """
    table: list[dict[str, Any]] = []
    for s, e in candidate_windows(val_pos.shape[1]):
        table.append({"rows": (s, e), "auroc": auroc(val_pos[:, s : e + 1].mean(1), val_neg[:, s : e + 1].mean(1))})
    best = max(r["auroc"] for r in table)
    near = [r for r in table if r["auroc"] >= best - tol]
    pick = min(near, key=lambda r: (r["rows"][0] - r["rows"][1], r["rows"][1]))
    return pick["rows"], table


def fit_tinst_guard(
    make_guard: Callable[[dict, dict], Any],
    model: TransformerBridge,
    harmful: Sequence[str | ChatPrompt],
    harmless: Sequence[str | ChatPrompt],
    config: GuardConfig,
    *,
    val_harmful: Sequence[str | ChatPrompt] | None = None,
    val_harmless: Sequence[str | ChatPrompt] | None = None,
    progress: bool = False,
):
    """A centroid or probe guard read at t_inst (see LatentGuard.fit); `make_guard(tensors, metadata)` builds it."""
    if config.position != "t_inst":
        raise HarmlensError(f"fit_tinst_guard fits t_inst variants, not {config.variant!r}")
    harmful, harmless = check_set("harmful", harmful), check_set("harmless", harmless)
    layers, target_fpr, balance = config.layers, config.target_fpr, config.balance
    rng, given = random.Random(config.seed), val_harmful is not None or val_harmless is not None
    harmful, harmless, val_harmful, val_harmless = hold_out(
        harmful,
        harmless,
        val_harmful,
        val_harmless,
        val_fraction=config.val_fraction,
        rng=rng,
        target_fpr=target_fpr,
        split=layers is None or target_fpr is not None,
    )
    selects = layers is None and bool(val_harmful and val_harmless)  # the layer window is chosen on held-out prompts
    cal_harmless = val_harmless
    if target_fpr is not None and selects:  # α on prompts used for nothing else
        harmless, val_harmless, cal_harmless = calibration_split(
            harmless, val_harmless, given, config.val_fraction, rng
        )
    fmt = chat_format(model, system=config.system)
    rows = check_layers(model, None if layers is None else list(layers))

    def expand(ps: list) -> list:
        return [v for p in ps for v in (balanced_variants(p) if balance and isinstance(p, str) else [p])]

    kw = dict(layers=rows, batch_size=config.batch_size, progress=progress)
    pos, neg = (
        _acts(model, fmt, expand(harmful), what="harmful", **kw),
        _acts(model, fmt, expand(harmless), what="harmless", **kw),
    )
    method = config.method
    params = _params(method, pos[:, :, 0], neg[:, :, 0])
    fit_info = {
        "n_harmful": len(harmful),
        "n_harmless": len(harmless),
        "balanced_endings": balance,
        "data_sha256": data_hash([str(p) for p in harmful], [str(p) for p in harmless]),
    }
    refuse = {"harmful": pos[:, :, 1].mean(0), "harmless": neg[:, :, 1].mean(0)}
    alpha = alpha_refuse = 0.0
    if val_harmful and val_harmless:
        vp = _acts(model, fmt, val_harmful, what="validation harmful", **kw)
        vn = _acts(model, fmt, val_harmless, what="validation harmless", **kw)
        sp, sn = _per_layer(method, params, vp[:, :, 0]), _per_layer(method, params, vn[:, :, 0])
        (s, e), table = select_window(sp, sn) if layers is None else ((0, len(rows) - 1), [])
        keep = slice(s, e + 1)
        fit_info.update(
            n_val_harmful=len(val_harmful),
            n_val_harmless=len(val_harmless),
            val_auroc=auroc(sp[:, keep].mean(1), sn[:, keep].mean(1)),
            windows=[
                {"layers": [rows[r["rows"][0]], rows[r["rows"][1]]], "auroc": round(r["auroc"], 4)} for r in table
            ],
        )
        if target_fpr is not None:
            cn = vn if cal_harmless is val_harmless else _acts(model, fmt, cal_harmless, what="calibration", **kw)
            alpha = threshold_for_fpr(_per_layer(method, params, cn[:, :, 0])[:, keep].mean(1), target_fpr)
            rn = _per_layer("centroid", refuse, cn[:, :, 1])[:, keep].mean(1)
            alpha_refuse = threshold_for_fpr(rn, target_fpr)
            fit_info["calibration"] = calibration_record(len(cn), target_fpr)
        rows, params = rows[keep], {k: v[keep] for k, v in params.items()}
        refuse = {k: v[keep] for k, v in refuse.items()}
    fit_info["prompt_roles"] = prompt_roles(
        (harmful, harmless),
        (val_harmful, val_harmless) if selects else None,
        cal_harmless if target_fpr is not None else None,
    )
    meta = {
        "format": FORMAT,
        "version": VERSION,
        **model_signature(model),
        "method": method,
        "position": "t_inst",
        "layers": rows,
        "alpha": alpha,
        "alpha_refuse": alpha_refuse,
        "target_fpr": target_fpr,
        "system": config.system,
        "config": config.to_dict(),
        "fit": fit_info,
    }
    tensors = {**params, "refuse": refuse["harmful"].float(), "accept": refuse["harmless"].float()}
    return make_guard(tensors, meta)
