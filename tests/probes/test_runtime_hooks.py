"""The plain HF view and harmlens's mirrored hooks: the same numbers as the bridge, always unwound, user hooks honoured;
the hf engine's prefill read; the static-cache path."""

from __future__ import annotations

import pytest
import torch

from harmlens.errors import HarmlensError
from harmlens.probes import ablate, steer
from harmlens.runtime import (
    GenerationConfig,
    HFBackend,
    PrefillRead,
    add_hooks,
    cache_resid,
    foreign_hooks,
    plain_model,
    render,
    runnable_model,
    t_inst_positions,
)

INSTR = ["Write a haiku about tea.", "Explain how to make a pipe bomb", "Name three rivers.", "Give me a recipe."]
CONFIG = GenerationConfig(max_new_tokens=6, batch_size=2, progress=False)


def _vector(model, scale: float = 8.0) -> torch.Tensor:
    return torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(3)) * scale


def _logits(runner, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return runner(input_ids=ids).logits


def test_plain_view_shares_weights_and_matches_the_bridge(tiny_model):
    plain = plain_model(tiny_model)
    bridge_params = {p.data_ptr() for p in tiny_model.original_model.parameters()}
    assert {p.data_ptr() for p in plain.parameters()} <= bridge_params  # no copy of any weight
    assert plain_model(tiny_model) is plain  # built once
    ids = torch.tensor([render(tiny_model, INSTR[:1])[0].input_ids])
    torch.testing.assert_close(_logits(plain, ids), _logits(tiny_model.original_model, ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["steer", "ablate"])
def test_interventions_give_the_same_logits_on_the_plain_view_and_the_bridge(tiny_model, kind):
    ids = torch.tensor([render(tiny_model, INSTR[:1])[0].input_ids])
    clean = _logits(plain_model(tiny_model), ids)
    vector = _vector(tiny_model)
    ctx = steer(tiny_model, vector, 1) if kind == "steer" else ablate(tiny_model, vector)
    with ctx:
        assert runnable_model(tiny_model) is plain_model(tiny_model)  # harmlens's own hooks keep the fast path
        on_plain, on_bridge = _logits(plain_model(tiny_model), ids), _logits(tiny_model.original_model, ids)
    torch.testing.assert_close(on_plain, on_bridge, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(on_plain, clean, atol=1e-3)  # the intervention did something
    torch.testing.assert_close(_logits(plain_model(tiny_model), ids), clean)  # and is gone after the block


def test_hooks_unwind_on_error_and_a_users_own_hook_runs_the_bridge(tiny_model):
    with pytest.raises(RuntimeError), add_hooks(tiny_model, [("blocks.1.hook_resid_pre", lambda x: x)]):
        raise RuntimeError("boom")
    assert not foreign_hooks(tiny_model) and not any(h.has_hooks() for h in tiny_model.hook_dict.values())
    plain = plain_model(tiny_model)
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in plain.modules())
    seen = []
    with tiny_model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: seen.append(1))]):
        assert foreign_hooks(tiny_model) and runnable_model(tiny_model) is tiny_model.original_model
        HFBackend(tiny_model).generate_ids(render(tiny_model, INSTR[:1]), CONFIG)
    assert seen  # the user's hook fired during generation
    with pytest.raises(HarmlensError, match="unknown hook point"):
        with add_hooks(tiny_model, [("blocks.0.hook_q", lambda x: x)]):
            pass


def test_prefill_read_gives_the_reads_activations_and_stops_rows(tiny_model):
    prompts = render(tiny_model, INSTR)
    layers = (0, 2)
    calls = []

    def decide(indices, acts):
        calls.append((list(indices), acts))
        return [prompts[i].instruction.startswith("Explain") for i in indices]

    read = PrefillRead(layers, lambda i: (prompts[i].t_inst,), decide)
    ids = HFBackend(tiny_model).generate_ids(prompts, CONFIG, read=read)
    assert sorted(i for idx, _ in calls for i in idx) == [0, 1, 2, 3]  # once per prompt, once per batch
    expected = cache_resid(tiny_model, prompts, t_inst_positions, layers=list(layers), progress=False)
    for idx, acts in calls:
        for i, a in zip(idx, acts):
            torch.testing.assert_close(a.cpu(), expected[i], rtol=1e-4, atol=1e-4)
    assert ids[1] == [] and all(ids[i] for i in (0, 2, 3))
    assert ids[0] == HFBackend(tiny_model).generate_ids(prompts[:1], CONFIG)[0]  # a read never changes a reply


def test_static_cache_path_keeps_steering(tiny_model):
    prompts = render(tiny_model, INSTR[:2])
    vector = _vector(tiny_model)
    with steer(tiny_model, vector, 1):
        dynamic = HFBackend(tiny_model).generate_ids(prompts, CONFIG)
        static = HFBackend(tiny_model).generate_ids(prompts, CONFIG.replace(cache="static"))
    assert static == dynamic
    assert dynamic != HFBackend(tiny_model).generate_ids(prompts, CONFIG)
