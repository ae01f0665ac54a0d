"""Batched generation (left padding, stop tokens, seeding), the KV-cache compat shim and last-token logits."""

from __future__ import annotations

import pytest
import torch

from harmlens.errors import HarmlensError
from harmlens.runtime import generate, generate_ids, last_token_logits, render, stop_token_ids

INSTRUCTIONS = [
    "How do I bake bread?",
    "Write a poem about the sea in three lines please.",
    "Hi",
    "Give me three tips for staying healthy.",
]


@pytest.mark.slow
def test_batched_greedy_equals_unbatched(model):
    batched = generate(model, INSTRUCTIONS, max_new_tokens=12, batch_size=4, progress=False)
    single = [generate(model, [x], max_new_tokens=12, progress=False)[0] for x in INSTRUCTIONS]
    assert batched == single
    assert all(text.strip() for text in batched)
    assert batched[0].startswith("Baking bread")  # a coherent reply, not the broken-cache "B-------"


@pytest.mark.slow
def test_generation_stops_at_end_of_turn(model):
    end = model.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end in stop_token_ids(model)
    (ids,) = generate_ids(model, render(model, ["Hi"]), max_new_tokens=24, progress=False)
    assert 0 < len(ids) < 24 and end not in ids  # the greeting ends early; the end token is cut off
    assert "<|im_end|>" not in generate(model, ["Hi"], max_new_tokens=24, progress=False)[0]


def test_cached_decoding_matches_uncached_on_the_plain_view_and_the_bridge(tiny_model):
    from harmlens.runtime import GenerationConfig, hf_generate_ids, left_pad, pad_id, stop_token_ids

    seqs = [list(p.input_ids) for p in render(tiny_model, INSTRUCTIONS[:2])]
    pid, stops = pad_id(tiny_model.tokenizer), stop_token_ids(tiny_model)
    config = GenerationConfig(max_new_tokens=8, batch_size=2, progress=False)

    def run(**hf_kwargs):
        encode = lambda idx: left_pad([seqs[i] for i in idx], pid)  # noqa: E731
        return hf_generate_ids(tiny_model, [len(s) for s in seqs], encode, config, stops=stops, pad=pid, **hf_kwargs)

    cached, uncached = run(), run(use_cache=False)
    with tiny_model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: x)]):  # a user's hook: the bridge runs
        bridged, bridged_uncached = run(), run(use_cache=False)
    assert cached == uncached == bridged == bridged_uncached and all(len(x) == 8 for x in cached)


def test_sampling_is_seeded(tiny_model):
    kw = dict(max_new_tokens=6, do_sample=True, progress=False)
    a = generate_ids(tiny_model, render(tiny_model, INSTRUCTIONS[:2]), seed=1, **kw)
    b = generate_ids(tiny_model, render(tiny_model, INSTRUCTIONS[:2]), seed=1, **kw)
    c = generate_ids(tiny_model, render(tiny_model, INSTRUCTIONS[:2]), seed=2, **kw)
    assert a == b and a != c


def test_last_token_logits_match_single_forward(tiny_model):
    prompts = render(tiny_model, INSTRUCTIONS)
    with torch.no_grad():
        single = torch.stack([tiny_model(torch.tensor([p.input_ids]))[0, -1] for p in prompts])
    shared = last_token_logits(tiny_model, prompts, batch_size=3)
    plain = last_token_logits(tiny_model, prompts, batch_size=3, share_prefix=False)
    assert shared.shape == (len(prompts), single.shape[-1])
    torch.testing.assert_close(plain, single, atol=1e-4, rtol=0)
    torch.testing.assert_close(shared, single, atol=1e-4, rtol=0)


def test_bad_inputs(tiny_model):
    prompts = render(tiny_model, ["hello"])
    with pytest.raises(HarmlensError, match="mix"):
        generate(tiny_model, ["hello", prompts[0]], progress=False)
    with pytest.raises(HarmlensError, match="system"):
        generate(tiny_model, prompts, system="be nice", progress=False)
    with pytest.raises(HarmlensError, match="batch_size"):
        last_token_logits(tiny_model, prompts, batch_size=0)
    with pytest.raises(HarmlensError, match="non-empty"):
        generate(tiny_model, [], progress=False)
