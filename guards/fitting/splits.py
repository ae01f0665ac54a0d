"""Which prompts play which role in a fit: fit, held-out selection (layer window, part scales) and α calibration.

α is calibrated on harmless prompts used for nothing else in the fit, so its FPR bound holds for new prompts; the
guard file records each role's count and a hash of its prompts.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence

from harmlens.errors import HarmlensError

MIN_VAL = 4  # per class, to hold out for layer choice / calibration


def check_set(name: str, prompts) -> list:
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
            check_set("validation harmful", val_harmful),
            check_set("validation harmless", val_harmless),
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


def calibration_split(
    fit_harmless: list, val_harmless: list | None, given: bool, val_fraction: float, rng: random.Random
) -> tuple[list, list, list]:
    """(fit harmless, selection harmless, calibration harmless) when something is also chosen on held-out prompts:
    a seeded half of given validation harmless prompts, else a further val_fraction of the fit harmless prompts, is
    kept for α alone."""
    val_harmless = list(val_harmless or [])
    if given:
        selection, calibration = _split(val_harmless, 0.5, rng)
    else:
        fit_harmless, calibration = _split(fit_harmless, val_fraction, rng)
        selection = val_harmless
    if not calibration or len(selection) < 2:
        raise HarmlensError(
            f"calibrating to target_fpr needs at least {MIN_VAL} harmless prompts kept for calibration alone and 2 "
            f"for the held-out choice (pass more prompts or val_harmful/val_harmless)"
        )
    return fit_harmless, selection, calibration


def digest(prompts: Sequence) -> dict:
    """Count and sha256 of a prompt list (JSON-encoded as strings): what a guard file keeps of one role."""
    text = json.dumps([str(p) for p in prompts], ensure_ascii=False)
    return {"n": len(prompts), "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}


def prompt_roles(fit: tuple, selection: tuple | None, calibration: list | None) -> dict:
    """{role: {class: count and hash}} for the fit, held-out selection and calibration prompts (None: no such role)."""
    pair = lambda ps: {"harmful": digest(ps[0]), "harmless": digest(ps[1])}  # noqa: E731
    return {
        "fit": pair(fit),
        "selection": None if selection is None else pair(selection),
        "calibration": None if calibration is None else {"harmless": digest(calibration)},
    }
