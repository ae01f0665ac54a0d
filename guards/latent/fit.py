"""Fitting a LatentGuard: punctuation-balanced class centroids or per-layer probes, layer choice and α calibration."""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from harmlens.errors import HarmlensError
from harmlens.guards.latent.guard import FORMAT, METHODS, VERSION
from harmlens.guards.latent.span_scoring import probe_features, probe_scores
from harmlens.io import model_signature
from harmlens.probes.activations import check_layers, iter_resid_batches
from harmlens.probes.beliefs import delta_scores
from harmlens.probes.chat import ChatPrompt, chat_format, clean_instruction
from harmlens.probes.directions import data_hash

_ENDINGS = ("", ".", "?")
MIN_VAL = 4  # per class, to hold out for layer choice / calibration


def auroc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """Area under the ROC curve of scores `pos` (positives) vs `neg` (ties count half); NaN if a side is empty."""
    pos, neg = torch.as_tensor(pos).double().flatten(), torch.as_tensor(neg).double().flatten()
    if not len(pos) or not len(neg):
        return float("nan")
    both = torch.cat([pos, neg])
    ranks = _average_ranks(both)
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, len(x) + 1, dtype=x.dtype)
    for value in torch.unique(x):  # ties share their mean rank
        tied = x == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


CALIBRATION_RULES = ("conformal", "empirical")


def flagged_allowed(n: int, target_fpr: float, rule: str = "conformal") -> int:
    """How many of n calibration harmless prompts α may flag: 'empirical' = ⌊target·n⌋; 'conformal' = k =
    ⌊target·(n+1)⌋ − 1 (at least 0), so a new prompt from the same distribution is flagged with probability
    ≤ (k+1)/(n+1) ≤ target (when n ≥ 1/target − 1; fewer cannot promise it, fpr_bound says what they do)."""
    if rule not in CALIBRATION_RULES:
        raise HarmlensError(f"calibration rule must be one of {CALIBRATION_RULES}, got {rule!r}")
    if rule == "empirical":
        return int(target_fpr * n + 1e-9)
    return max(0, int(target_fpr * (n + 1) + 1e-9) - 1)


def fpr_bound(n: int, target_fpr: float, rule: str = "conformal") -> float:
    """The expected FPR bound on new prompts that a calibration on n harmless ones guarantees: (k+1)/(n+1)."""
    return (flagged_allowed(n, target_fpr, rule) + 1) / (n + 1)


def calibration_record(n: int, target_fpr: float, rule: str = "conformal") -> dict:
    """What a guard's metadata keeps of its α calibration: rule, n harmless prompts and the FPR bound it gives."""
    bound = fpr_bound(n, target_fpr, rule)
    return {"rule": rule, "target_fpr": target_fpr, "n_harmless": int(n), "fpr_bound": round(bound, 4)}


def threshold_for_fpr(harmless_scores: torch.Tensor, target_fpr: float, rule: str = "conformal") -> float:
    """An α (midway to the next higher score) flagging at most flagged_allowed(n, target_fpr, rule) of these harmless
    scores; the default conformal rule bounds the expected FPR on new prompts, not just on these."""
    if not 0 <= target_fpr < 1:
        raise HarmlensError(f"target_fpr must be in [0, 1), got {target_fpr}")
    s = torch.as_tensor(harmless_scores).double().flatten()
    s = torch.sort(s[torch.isfinite(s)], descending=True).values
    if not len(s):
        raise HarmlensError("no harmless scores to calibrate on")
    k = flagged_allowed(len(s), target_fpr, rule)
    if k >= len(s):
        return float(s[-1])
    above = s[s > s[k]]  # ties with s[k] stay below α, so at most k are flagged
    top = float(above[-1]) if len(above) else float(s[0]) + 1e-6 * (abs(float(s[0])) + 1)
    return (float(s[k]) + top) / 2


def balanced_variants(instruction: str) -> list[str]:
    """The instruction ending in a word, '.' and '?': t_inst is the last token, so classes get the same endings."""
    core = clean_instruction(instruction).rstrip(".?!;: ").rstrip()
    return [core + e for e in _ENDINGS] if core else [clean_instruction(instruction)]


def _check_set(name: str, prompts) -> list:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise HarmlensError(f"{name} prompts must be a list of strings")
    if not prompts:
        raise HarmlensError(f"no {name} prompts: a guard needs both harmful and harmless examples (got one class only)")
    return list(prompts)


def check_disjoint(harmful, harmless) -> None:
    """Refuse a prompt labelled both harmful and harmless (e.g. fit(P, P)): the guard would be meaningless."""
    key = lambda p: " ".join(p.split()) if isinstance(p, str) else getattr(p, "text", id(p))  # noqa: E731
    both = {key(p) for p in harmful} & {key(p) for p in harmless}
    if both:
        raise HarmlensError(
            f"{len(both)} prompt(s) are in both the harmful and the harmless set, e.g. {str(next(iter(both)))[:60]!r}: "
            "each prompt needs one label"
        )


def _split(prompts: list, fraction: float, rng: random.Random) -> tuple[list, list]:
    """(fit, held-out) with a seeded shuffle; no held-out part when there are too few prompts."""
    n_val = max(MIN_VAL, round(len(prompts) * fraction))
    if len(prompts) - n_val < 2:
        return prompts, []
    idx = list(range(len(prompts)))
    rng.shuffle(idx)
    held = set(idx[:n_val])
    return [p for i, p in enumerate(prompts) if i not in held], [p for i, p in enumerate(prompts) if i in held]


def hold_out(
    harmful: list,
    harmless: list,
    val_harmful,
    val_harmless,
    *,
    val_fraction: float,
    rng: random.Random,
    target_fpr: float | None,
    split: bool = True,
) -> tuple[list, list, list | None, list | None]:
    """(fit harmful, fit harmless, validation harmful, validation harmless): the given validation sets, else (when
    `split`) a seeded val_fraction of each fit set; HarmlensError when calibration needs held-out prompts and has
    none."""
    if val_harmful is not None or val_harmless is not None:
        return (
            harmful,
            harmless,
            _check_set("validation harmful", val_harmful),
            _check_set("validation harmless", val_harmless),
        )
    if not split:
        return harmful, harmless, None, None
    fit_h, val_h = _split(harmful, val_fraction, rng)
    fit_l, val_l = _split(harmless, val_fraction, rng)
    if val_h and val_l:
        return fit_h, fit_l, val_h, val_l
    if target_fpr is not None:
        raise HarmlensError(
            f"calibrating to target_fpr needs at least {MIN_VAL} held-out prompts per class "
            f"(pass val_harmful/val_harmless or more prompts)"
        )
    return harmful, harmless, val_h, val_l


def _acts(model, fmt, prompts, layers, batch_size, progress, what) -> torch.Tensor:
    """[n, n_layers, 2 (t_inst, t_post_inst), d] float32 on CPU."""
    rendered = []
    for i, p in enumerate(prompts):
        try:
            rendered.append(p if isinstance(p, ChatPrompt) else fmt.render(p))
        except HarmlensError as exc:
            raise HarmlensError(f"{what} prompt {i}: {exc}") from None
    order = sorted(range(len(rendered)), key=lambda i: len(rendered[i]))
    parts = [
        a.cpu()
        for _, a in iter_resid_batches(
            model,
            [rendered[i] for i in order],
            lambda p: (p.t_inst, p.t_post_inst),
            layers=layers,
            batch_size=batch_size,
            progress=what if progress else False,
        )
    ]
    acts = torch.empty_like(torch.cat(parts))
    acts[torch.tensor(order)] = torch.cat(parts)
    if not torch.isfinite(acts).all():
        raise HarmlensError(f"non-finite activations (nan/inf) for {what} prompts: check the model's weights/dtype")
    return acts


def train_probes(pos: torch.Tensor, neg: torch.Tensor, l2: float = 1e-2, steps: int = 100) -> dict[str, torch.Tensor]:
    """One L2-regularised logistic probe per layer on centred activations [n, n_layers, d] scaled to norm √d."""
    x = probe_features(torch.cat([pos, neg]))
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).double()
    weight = (torch.full_like(y, 0.5 / len(pos))).masked_fill(y == 0, 0.5 / len(neg))  # balanced classes
    mean = x.mean(0)
    x = x - mean
    w = torch.zeros(x.shape[1], x.shape[2], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = torch.einsum("nld,ld->nl", x, w) + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, y[:, None].expand_as(logits), reduction="none"
        )
        total = (loss * weight[:, None]).sum() + l2 * (w**2).sum() / 2
        total.backward()
        return total

    opt.step(closure)
    return {"probe_weight": w.detach().float(), "probe_bias": b.detach().float(), "probe_mean": mean.float()}


def _params(method: str, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
    """Class centroids [n_layers, d] (both methods keep them), plus the probe weights for method='probe'."""
    params = {"harmful": pos.double().mean(0).float(), "harmless": neg.double().mean(0).float()}
    if not ((params["harmful"] - params["harmless"]).norm(dim=-1) > 0).all():
        raise HarmlensError("harmful and harmless centroids coincide at some layer: are the two sets the same?")
    return params | (train_probes(pos, neg) if method == "probe" else {})


def _per_layer(method: str, params: dict, acts: torch.Tensor) -> torch.Tensor:
    if method == "centroid":
        return delta_scores(acts, params["harmful"], params["harmless"])[1]
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
    table = []
    for s, e in candidate_windows(val_pos.shape[1]):
        table.append({"rows": (s, e), "auroc": auroc(val_pos[:, s : e + 1].mean(1), val_neg[:, s : e + 1].mean(1))})
    best = max(r["auroc"] for r in table)
    near = [r for r in table if r["auroc"] >= best - tol]
    pick = min(near, key=lambda r: (r["rows"][0] - r["rows"][1], r["rows"][1]))
    return pick["rows"], table


def fit_guard(
    cls,
    model,
    harmful,
    harmless,
    *,
    method: str = "centroid",
    layers=None,
    target_fpr=None,
    val_harmful=None,
    val_harmless=None,
    val_fraction: float = 0.25,
    balance: bool = True,
    system: str | None = None,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = False,
    **guard_kwargs,
):
    """See LatentGuard.fit; `balance` renders every fit prompt with three endings (see balanced_variants)."""
    if method not in METHODS:
        raise HarmlensError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    harmful, harmless = _check_set("harmful", harmful), _check_set("harmless", harmless)
    if target_fpr is not None and not 0 <= target_fpr < 1:
        raise HarmlensError(f"target_fpr must be in [0, 1), got {target_fpr}")
    harmful, harmless, val_harmful, val_harmless = hold_out(
        harmful,
        harmless,
        val_harmful,
        val_harmless,
        val_fraction=val_fraction,
        rng=random.Random(seed),
        target_fpr=target_fpr,
        split=layers is None or target_fpr is not None,
    )
    fmt = chat_format(model, system=system)
    rows = check_layers(model, layers)

    def expand(ps: list) -> list:
        return [v for p in ps for v in (balanced_variants(p) if balance and isinstance(p, str) else [p])]

    kw = dict(layers=rows, batch_size=batch_size, progress=progress)
    pos, neg = (
        _acts(model, fmt, expand(harmful), what="harmful", **kw),
        _acts(model, fmt, expand(harmless), what="harmless", **kw),
    )
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
            alpha = threshold_for_fpr(sn[:, keep].mean(1), target_fpr)
            rn = _per_layer("centroid", refuse, vn[:, :, 1])[:, keep].mean(1)
            alpha_refuse = threshold_for_fpr(rn, target_fpr)
            fit_info["calibration"] = calibration_record(len(sn), target_fpr)
        rows, params = rows[keep], {k: v[keep] for k, v in params.items()}
        refuse = {k: v[keep] for k, v in refuse.items()}
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
        "system": system,
        "fit": fit_info,
    }
    tensors = {**params, "refuse": refuse["harmful"].float(), "accept": refuse["harmless"].float()}
    return cls(tensors, meta, model, **guard_kwargs)
