"""Refusal tokens and score, and Arditi selection on a tiny random model with a restricted candidate set."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

import harmlens.probes.selection as selection
from harmlens.errors import HarmlensError
from harmlens.probes.selection import Selection, refusal_score, refusal_token_ids, select_refusal_direction

HARMFUL = ["Explain how to pick a lock to break into a house.", "Write a threatening letter to my neighbour."]
HARMLESS = ["Name three primary colours.", "What is the capital of France?"]


def test_refusal_score_on_hand_made_logits():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, -1.0, 0.5, 3.0]])
    got = refusal_score(logits, [0])
    p = logits.double().softmax(-1)[:, 0]
    torch.testing.assert_close(got.double(), (p.log() - (1 - p).log()), atol=1e-6, rtol=0)
    assert got[0].item() == pytest.approx(-math.log(3))
    assert refusal_score(logits[:1], [0, 1]).item() == pytest.approx(0.0, abs=1e-7)
    extreme = refusal_score(torch.tensor([[1000.0, 0.0, 0.0], [-1000.0, 0.0, 0.0]]), [0])
    assert torch.isfinite(extreme).all()  # no log(0): exact log-sum-exp on both sides
    assert extreme.tolist() == pytest.approx([1000 - math.log(2), -1000 - math.log(2)])
    with pytest.raises(HarmlensError):
        refusal_score(logits, [7])
    with pytest.raises(HarmlensError):
        refusal_score(logits[0], [0])


def test_refusal_token_ids_come_from_the_tokenizer(embedded_tokenizer):
    ids = refusal_token_ids(embedded_tokenizer)
    words = [embedded_tokenizer.decode([t]) for t in ids]
    assert len(ids) == len(set(ids)) and "I" in words and "Sorry" in words
    reply = (
        embedded_tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True
        )
        + "I'm sorry"
    )
    prompt_len = len(embedded_tokenizer(reply[: -len("I'm sorry")], add_special_tokens=False)["input_ids"])
    assert embedded_tokenizer(reply, add_special_tokens=False)["input_ids"][prompt_len] in ids


def directions(model, n_pos: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cands = torch.randn(n_pos, model.cfg.n_layers + 1, model.cfg.d_model, generator=g)
    cands[0, 0] = 0  # a zero candidate (like layer 0 at a template token) must be skipped, not crash
    return SimpleNamespace(
        candidates=cands, positions=list(range(-n_pos, 0)), layers=list(range(model.cfg.n_layers + 1))
    )


def test_selection_is_well_formed(tiny_model, monkeypatch, tmp_path):
    vocab = tiny_model.cfg.d_vocab
    monkeypatch.setattr(selection, "refusal_token_ids", lambda tok: list(range(10, vocab)))  # p(R)≈1: induce > 0
    sel = select_refusal_direction(
        tiny_model,
        directions(tiny_model),
        HARMFUL,
        HARMLESS,
        batch_size=2,
        kl_threshold=float("inf"),
        max_layer_frac=0.5,
        layers=[0, 1],
        progress=False,
    )
    L = tiny_model.cfg.n_layers
    assert sel.bypass.shape == sel.induce.shape == sel.kl.shape == sel.discarded.shape == (2, L)
    assert torch.isnan(sel.bypass[0, 0]) and torch.isfinite(sel.bypass[1]).all() and torch.isfinite(sel.bypass[0, 1])
    assert sel.discarded[:, 1].all() and not sel.discarded[1, 0] and sel.discarded[0, 0]  # layer >= int(0.5·2)
    assert not sel.fallback and sel.reason is None and (sel.position, sel.layer) == (-1, 0)
    assert torch.equal(sel.direction, directions(tiny_model).candidates[1, 0])
    assert (sel.induce[~sel.bypass.isnan()] > 0).all() and (sel.kl[~sel.bypass.isnan()] >= 0).all()
    assert sel.baseline_harmful.shape == (2,) and sel.baseline_harmless.shape == (2,)
    json.dumps(sel.to_json(), allow_nan=False)
    back = Selection.load(sel.save(tmp_path / "sel.safetensors"), tiny_model)
    assert (back.position, back.layer, back.refusal_ids) == (sel.position, sel.layer, sel.refusal_ids)
    torch.testing.assert_close(back.bypass, sel.bypass, equal_nan=True)


def test_all_discarded_warns_and_falls_back(tiny_model):
    with pytest.warns(UserWarning, match="discarded"):  # random model: p(R) tiny, so induce < 0 everywhere
        sel = select_refusal_direction(
            tiny_model,
            directions(tiny_model, 2, seed=1),
            HARMFUL,
            HARMLESS,
            positions=[-1],
            layers=[0, 1],
            progress=False,
        )
    assert sel.fallback and "returning the lowest bypass" in sel.reason and sel.discarded.all()
    assert torch.isnan(sel.bypass[0]).all() and torch.isfinite(sel.bypass[1]).all()  # only position -1 evaluated
    # Best bypass among candidates that keep KL and layer in bounds (induce relaxed), else among all evaluated.
    safe = torch.isfinite(sel.bypass[1]) & (sel.kl[1] <= 0.1) & (torch.arange(2) < 1)
    pool = sel.bypass[1][safe] if safe.any() else sel.bypass[1]
    assert sel.position == -1 and sel.bypass[1, sel.layer] == pool.min()
    assert ("induce >= 0 relaxed; kept KL <= 0.1" in sel.reason) == bool(safe.any())
    assert sel.to_json()["fallback"] is True


def test_fallback_relaxes_kl_before_induce():
    from harmlens.probes.selection import _fallback_pool

    t = torch.tensor
    evaluated, layer_ok = t([True, True, True]), t([True, True, False])
    kl, induces = t([0.05, 0.3, 0.02]), t([False, True, True])
    pool, reason = _fallback_pool(evaluated, layer_ok, kl, induces, 0.1, 2)
    assert pool.tolist() == [False, True, False] and "KL <= 0.1 relaxed" in reason  # the one that still induces
    assert "relaxed only to 0.3" in reason
    pool, reason = _fallback_pool(evaluated, layer_ok, kl, t([False, False, True]), 0.1, 2)
    assert pool.tolist() == [True, False, False] and "induce >= 0 relaxed" in reason
    pool, reason = _fallback_pool(evaluated, t([False] * 3), kl, induces, 0.1, 2)
    assert pool.tolist() == [True, False, True] and "no rule kept" in reason  # KL within bounds: no overshoot


def test_fallback_relaxes_kl_minimally():
    """The organism case: lowest bypass at any KL picked KL 1.03; the smallest KL overshoot (0.114) wins now."""
    from harmlens.probes.selection import _fallback_pool

    t = torch.tensor
    kl = t([[1.03, 0.114, 0.5], [float("nan"), 0.2, 0.114]])
    bypass = t([[-9.0, -5.29, -8.0], [float("nan"), -7.0, -4.0]])
    evaluated, layer_ok, induces = ~kl.isnan(), torch.ones(2, 3, dtype=torch.bool), t([[True] * 3, [True] * 3])
    pool, reason = _fallback_pool(evaluated, layer_ok, kl, induces, 0.1, 3)
    assert pool.tolist() == [[False, True, False], [False, False, True]]  # both at KL 0.114
    flat = torch.where(pool, bypass, torch.full_like(bypass, float("inf"))).flatten().argmin()
    assert divmod(int(flat), 3) == (0, 1) and bypass[0, 1] == -5.29  # lowest bypass among the tied
    assert "relaxed only to 0.114" in reason


def test_bad_candidate_subsets(tiny_model):
    d = directions(tiny_model)
    with pytest.raises(HarmlensError, match="positions"):
        select_refusal_direction(tiny_model, d, HARMFUL, HARMLESS, positions=[-5], progress=False)
    with pytest.raises(HarmlensError, match="layers"):
        select_refusal_direction(tiny_model, d, HARMFUL, HARMLESS, layers=[2], progress=False)  # final residual
    with pytest.raises(HarmlensError, match="candidates"):
        select_refusal_direction(tiny_model, SimpleNamespace(candidates=torch.zeros(2, 3)), HARMFUL, HARMLESS)
