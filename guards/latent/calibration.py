"""α calibration and ranking: AUROC, the conformal/empirical threshold rules and the record a guard keeps of them."""

from __future__ import annotations

import math

import torch

from harmlens.errors import HarmlensError


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


def check_calibration_record(record: object) -> str | None:
    """Why a guard file's calibration record is malformed, or None when it is well-formed."""
    if not isinstance(record, dict):
        return f"calibration record must be an object, got {type(record).__name__}"
    if record.get("rule") not in CALIBRATION_RULES:
        return f"calibration rule must be one of {CALIBRATION_RULES}, got {record.get('rule')!r}"
    target, n, bound = record.get("target_fpr"), record.get("n_harmless"), record.get("fpr_bound")
    if not (_number(target) and 0 <= target < 1):  # type: ignore[operator]
        return f"calibration target_fpr must be a number in [0, 1), got {target!r}"
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        return f"calibration n_harmless must be a count, got {n!r}"
    if not (_number(bound) and 0 <= bound <= 1):  # type: ignore[operator]
        return f"calibration fpr_bound must be a number in [0, 1], got {bound!r}"
    return None


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
