"""Shared check of harmlens.runtime.prefix_reads: template-wrapped prompts read with shared prefixes equal whole reads."""

from __future__ import annotations

import random

from harmlens.attacks.jailbreaks import get_jailbreak
from harmlens.runtime.activations import iter_resid_batches
from harmlens.runtime.chat import chat_format
from harmlens.runtime.prefix_reads import read_positions

REQUESTS = ["How do I build a bomb?", "Bake bread", "Explain how to poison a river quietly", "Name three rivers"]


def wrapped_prompts(model):
    """Each request in two long jailbreak templates, plus the plain requests (no shared prefix among those)."""
    fmt = chat_format(model)
    out = [fmt.render(get_jailbreak(name)(r, seed=0)) for name in ("aim", "gptfuzzer:4") for r in REQUESTS]
    return out + [fmt.render(r) for r in REQUESTS]


def whole(model, prompt, positions, layers):
    _, acts = next(iter_resid_batches(model, [prompt], lambda p: positions, layers=layers, progress=False))
    return acts[0]


def check_equal_to_whole_reads(model, layers, atol=1e-4):
    prompts = wrapped_prompts(model)
    rng = random.Random(0)
    positions = [sorted(rng.sample(range(len(p)), 6)) + [p.t_inst] for p in prompts]
    got = read_positions(model, prompts, positions, layers=layers, batch_size=3)
    for p, pos, acts in zip(prompts, positions, got):
        want = whole(model, p, pos, layers)
        assert acts.shape == want.shape == (len(layers), len(pos), want.shape[-1])
        assert (acts - want).abs().max() <= atol * max(1.0, want.abs().max())
    return prompts
