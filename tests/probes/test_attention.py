"""SDPA attention on the bridge: same greedy tokens and activations as TransformerLens' eager path; hooks on
attention internals fall back to the eager reconstruction."""

import pytest
import torch

from harmlens.probes import generate, load_model
from harmlens.probes.interventions import ablate, steer
from harmlens.runtime.activations import cache_resid, t_post_inst_positions
from harmlens.runtime.attention import enable_fast_attention
from harmlens.runtime.chat import chat_format


@pytest.fixture(scope="module")
def pair():
    """The embedded model twice: fast attention (the default) and TransformerLens' eager attention."""
    fast, eager = load_model(device="cpu"), load_model(device="cpu")
    assert enable_fast_attention(eager, enabled=False) == 0
    return fast, eager


def test_loaded_models_run_sdpa(pair):
    fast, eager = pair
    assert fast.harmlens_fast_attention == fast.cfg.n_layers
    assert fast.original_model.config._attn_implementation == "sdpa"
    assert eager.original_model.config._attn_implementation == "eager"
    assert enable_fast_attention(fast) == fast.cfg.n_layers  # idempotent


def test_greedy_tokens_and_activations_match_eager(pair, harmful_prompts, harmless_prompts):
    fast, eager = pair
    prompts = chat_format(fast).render_many(harmful_prompts[:6] + harmless_prompts[:6])
    assert generate(fast, prompts, max_new_tokens=16, progress=False) == generate(
        eager, prompts, max_new_tokens=16, progress=False
    )
    layers = [3, 15, fast.cfg.n_layers]
    a = cache_resid(fast, prompts, t_post_inst_positions, layers=layers, progress=False)
    b = cache_resid(eager, prompts, t_post_inst_positions, layers=layers, progress=False)
    rel = ((a - b).norm(dim=-1) / b.norm(dim=-1)).max().item()
    assert rel < 1e-4, rel  # SmolLM2 has activations of ~600, so compare relative to the residual's norm


def test_interventions_match_eager(pair, harmful_prompts, embedded_directions):
    fast, eager = pair
    prompts = chat_format(fast).render_many(harmful_prompts[:4])
    r = embedded_directions.refusal[embedded_directions.row(10)]
    outs = []
    for m in (fast, eager):
        with steer(m, -r, 10):
            steered = generate(m, prompts, max_new_tokens=12, progress=False)
        with ablate(m, r):
            ablated = generate(m, prompts, max_new_tokens=12, progress=False)
        outs.append((steered, ablated))
    assert outs[0] == outs[1]


def test_pattern_hook_falls_back_to_eager(pair, harmful_prompts):
    fast, eager = pair
    prompts = chat_format(fast).render_many(harmful_prompts[:2])
    seen = {}

    def grab(x, hook):
        seen[hook.name] = x.detach().clone()

    name = "blocks.2.attn.hook_pattern"
    for m, key in ((fast, "fast"), (eager, "eager")):
        with m.hooks(fwd_hooks=[(name, grab)]):
            ids = torch.tensor([prompts[0].input_ids])
            m(ids)
        seen[key] = seen.pop(name)
    assert seen["fast"].shape == seen["eager"].shape
    assert torch.allclose(seen["fast"], seen["eager"], atol=1e-5)
