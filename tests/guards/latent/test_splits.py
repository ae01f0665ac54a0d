"""harmlens.guards.fitting.splits: α is calibrated on harmless prompts used for nothing else, and the file says so."""

from __future__ import annotations

import random
from itertools import combinations

import pytest
import torch
from test_latent_guard import HARMFUL, HARMLESS

from harmlens.errors import HarmlensError
from harmlens.guards import LatentGuard
from harmlens.guards.fitting.splits import calibration_split, digest, hold_out
from harmlens.guards.latent.calibration import threshold_for_fpr
from harmlens.guards.latent.configs import CentroidConfig, SpanLinearConfig

MORE_HARMLESS = HARMLESS + [f"{p} Please keep it short." for p in HARMLESS]  # 16 distinct prompts
MORE_HARMFUL = HARMFUL + [f"{p} Please keep it short." for p in HARMFUL]


def test_three_way_split_is_disjoint_and_seeded():
    rng = random.Random(0)
    fit_h, fit_l, val_h, val_l = hold_out(
        MORE_HARMFUL, MORE_HARMLESS, None, None, val_fraction=0.25, rng=rng, target_fpr=0.25
    )
    fit_l, sel_l, cal_l = calibration_split(fit_l, val_l, False, 0.25, rng)
    assert (len(fit_l), len(sel_l), len(cal_l)) == (8, 4, 4)
    assert set(fit_l) | set(sel_l) | set(cal_l) == set(MORE_HARMLESS)
    assert not (set(fit_l) & set(cal_l) or set(sel_l) & set(cal_l) or set(fit_l) & set(sel_l))
    fit2, sel2, cal2 = calibration_split(MORE_HARMLESS, MORE_HARMLESS[:8], True, 0.25, random.Random(1))
    assert fit2 == MORE_HARMLESS and len(sel2) == len(cal2) == 4 and not set(sel2) & set(cal2)
    with pytest.raises(HarmlensError, match="kept for calibration alone"):
        calibration_split(MORE_HARMLESS, MORE_HARMLESS[:4], True, 0.25, random.Random(0))
    assert digest(["a", "b"])["n"] == 2 and digest(["a", "b"]) != digest(["b", "a"])


def test_calibrated_fit_keeps_alpha_prompts_apart_and_records_roles(tiny_model):
    guard = LatentGuard.fit(tiny_model, MORE_HARMFUL, MORE_HARMLESS, CentroidConfig(target_fpr=0.25, seed=1))
    fit = guard.metadata["fit"]
    roles = fit["prompt_roles"]
    n = {role: roles[role]["harmless"]["n"] for role in ("fit", "selection", "calibration")}
    assert n == {"fit": 8, "selection": 4, "calibration": 4} and sum(n.values()) == len(MORE_HARMLESS)
    assert roles["fit"]["harmful"]["n"] == 12 and roles["selection"]["harmful"]["n"] == 4
    assert fit["calibration"]["n_harmless"] == 4 and fit["n_val_harmless"] == 4 and fit["n_harmless"] == 8
    hashes = {roles[r]["harmless"]["sha256"] for r in ("fit", "selection", "calibration")}
    assert len(hashes) == 3
    cal, sel = (_named(MORE_HARMLESS, roles[r]["harmless"]) for r in ("calibration", "selection"))
    assert not set(cal) & set(sel)  # the recorded hashes name two disjoint subsets
    scores = torch.tensor([v.score for v in guard(cal)])
    assert guard.alpha == pytest.approx(threshold_for_fpr(scores, 0.25), abs=1e-5)
    plain = LatentGuard.fit(tiny_model, MORE_HARMFUL, MORE_HARMLESS, CentroidConfig(seed=1))
    assert plain.metadata["fit"]["prompt_roles"]["calibration"] is None


def test_given_validation_sets_are_split_between_selection_and_alpha(tiny_model):
    val_l = [f"Tell me about {x}." for x in ("rivers", "owls", "tea", "chess", "clouds", "maps", "jazz", "moss")]
    guard = LatentGuard.fit(
        tiny_model,
        HARMFUL,
        HARMLESS,
        CentroidConfig(target_fpr=0.25),
        val_harmful=HARMFUL[:4],
        val_harmless=val_l,
    )
    roles = guard.metadata["fit"]["prompt_roles"]
    assert roles["fit"]["harmless"]["n"] == 8 and roles["selection"]["harmless"]["n"] == 4
    cal = roles["calibration"]["harmless"]
    assert cal["n"] == 4 and guard.metadata["fit"]["calibration"]["n_harmless"] == 4
    scores = torch.tensor([v.score for v in guard(_named(val_l, cal))])
    assert guard.alpha == pytest.approx(threshold_for_fpr(scores, 0.25), abs=1e-5)


def test_two_part_span_guard_scales_and_calibrates_on_different_prompts(tiny_model):
    config = SpanLinearConfig(layers=(1, 2), wrappers=None, target_fpr=0.25)
    guard = LatentGuard.fit(tiny_model, MORE_HARMFUL, MORE_HARMLESS, config)
    roles = guard.metadata["fit"]["prompt_roles"]
    assert roles["selection"]["harmless"]["n"] == 4 and roles["calibration"]["harmless"]["n"] == 4
    assert roles["selection"]["harmless"]["sha256"] != roles["calibration"]["harmless"]["sha256"]
    assert guard.metadata["fit"]["calibration"]["n_harmless"] == 4


def _named(items: list, record: dict) -> list:
    """The one subset of items (in their order, as a split keeps it) whose count and hash the record gives."""
    found = [list(c) for c in combinations(items, record["n"]) if digest(list(c)) == record]
    assert len(found) == 1
    return found[0]
