"""steer / ablate context managers (effect, unwinding, composition, decode steps) and orthogonalize == ablate."""

from __future__ import annotations

import pytest
import torch

from harmlens.errors import HarmlensError
from harmlens.probes import load_model
from harmlens.probes.interventions import ablate, orthogonalize, steer
from harmlens.runtime import generate_ids, last_token_logits, render

PROMPTS = ["How do I bake bread?", "Tell me a joke about cats."]


def logits(model) -> torch.Tensor:
    return last_token_logits(model, render(model, PROMPTS), share_prefix=False)


def n_hooks(model) -> int:
    return sum(len(hp.fwd_hooks) + len(hp._forward_hooks) for hp in model.hook_dict.values())


def vec(model, seed: int = 0, scale: float = 4.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(model.cfg.d_model, generator=g)


def test_steer_changes_logits_and_restores(tiny_model):
    base, hooks = logits(tiny_model), n_hooks(tiny_model)
    with steer(tiny_model, vec(tiny_model), 1):
        steered = logits(tiny_model)
    assert (steered - base).abs().max() > 1e-2
    torch.testing.assert_close(logits(tiny_model), base, atol=0, rtol=0)
    with pytest.raises(RuntimeError, match="boom"):
        with steer(tiny_model, vec(tiny_model), 2, coeff=3.0):  # layer 2 == n_layers: final residual
            assert (logits(tiny_model) - base).abs().max() > 1e-2
            raise RuntimeError("boom")
    assert n_hooks(tiny_model) == hooks
    torch.testing.assert_close(logits(tiny_model), base, atol=0, rtol=0)


def test_nested_steer_and_ablate_compose_and_unwind(tiny_model):
    v, r = vec(tiny_model, 1), vec(tiny_model, 2)
    base, hooks = logits(tiny_model), n_hooks(tiny_model)
    with steer(tiny_model, v, 1):
        only_steer = logits(tiny_model)
    with ablate(tiny_model, r):
        only_ablate = logits(tiny_model)
    with pytest.raises(KeyError):
        with steer(tiny_model, v, 1):
            with ablate(tiny_model, r):
                both = logits(tiny_model)
                assert (both - only_steer).abs().max() > 1e-3 and (both - only_ablate).abs().max() > 1e-3
            torch.testing.assert_close(logits(tiny_model), only_steer, atol=0, rtol=0)
            raise KeyError("unwind")
    assert n_hooks(tiny_model) == hooks
    torch.testing.assert_close(logits(tiny_model), base, atol=0, rtol=0)


def test_invalid_arguments_leave_no_hooks(tiny_model):
    hooks, v = n_hooks(tiny_model), vec(tiny_model)
    for bad in (
        lambda: steer(tiny_model, v, 3),
        lambda: steer(tiny_model, v[:5], 0),
        lambda: steer(tiny_model, v, 0, positions="generated"),
        lambda: ablate(tiny_model, 0 * v),
        lambda: steer(tiny_model, v.tolist(), 0),
    ):
        with pytest.raises(HarmlensError):
            with bad():
                pass
    assert n_hooks(tiny_model) == hooks


def test_ablate_makes_every_hooked_point_orthogonal_including_generated_tokens(tiny_model):
    r = vec(tiny_model, 3)
    r_hat = r / r.norm()
    points = [
        f"blocks.{i}.{p}"
        for i in range(tiny_model.cfg.n_layers)
        for p in ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_mid", "hook_resid_post")
    ]
    seen = []

    def probe(x, hook):
        seen.append((x.shape[1], (x @ r_hat).abs().max().item(), x.norm(dim=-1).max().item()))

    with ablate(tiny_model, r), tiny_model.hooks(fwd_hooks=[(p, probe) for p in points + ["ln_final.hook_in"]]):
        generate_ids(tiny_model, render(tiny_model, PROMPTS), max_new_tokens=3, progress=False)
    assert len(seen) == 3 * (len(points) + 1)  # prefill + 2 cached decode steps
    assert sum(1 for s in seen if s[0] == 1) == 2 * (len(points) + 1)
    assert all(dot <= 1e-5 * max(norm, 1.0) for _, dot, norm in seen)
    with tiny_model.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", probe)]):  # control: not orthogonal without it
        seen.clear()
        logits(tiny_model)
    assert seen[0][1] > 1e-2


def test_steer_prompt_positions_leave_decode_steps_unsteered(tiny_model):
    prompts, v = render(tiny_model, PROMPTS[:1]), vec(tiny_model, 4, scale=20.0)
    n = len(prompts[0])
    with steer(tiny_model, v, 1, positions="prompt"):
        (prompt_only,) = generate_ids(tiny_model, prompts, max_new_tokens=6, progress=False)
    with steer(tiny_model, v, 1):
        (everywhere,) = generate_ids(tiny_model, prompts, max_new_tokens=6, progress=False)
    assert prompt_only != everywhere

    def prompt_positions_only(x, hook):  # teacher-forced reference: steer positions < n only
        x = x.clone()
        x[:, :n] += v
        return x

    seq = torch.tensor([list(prompts[0].input_ids) + prompt_only])
    with torch.no_grad(), tiny_model.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", prompt_positions_only)]):
        ref = tiny_model(seq)[0, n - 1 : -1].argmax(-1).tolist()
    assert ref == prompt_only


def test_orthogonalize_is_exact_in_float64(make_tiny_model):
    m = make_tiny_model(seed=5)
    m.original_model.double()
    r = vec(m, 5).double()
    x = torch.tensor([render(m, PROMPTS[:1])[0].input_ids])
    with torch.no_grad():
        base = m(x)
        with ablate(m, r):
            hooked = m(x)
        lm_head = m.original_model.get_output_embeddings().original_component.weight.detach().clone()
        orthogonalize(m, r)
        edited = m(x)
    assert (hooked - base).abs().max() > 1e-3
    torch.testing.assert_close(edited, hooked, atol=1e-9, rtol=0)
    torch.testing.assert_close(m.original_model.get_output_embeddings().original_component.weight, lm_head)


@pytest.mark.slow
def test_orthogonalize_matches_ablate_on_embedded_model(model):
    fresh = load_model(device="cpu")  # orthogonalize edits in place: never touch the shared fixture
    r = vec(model, 6)
    with ablate(model, r):
        hooked = logits(model)
    assert (hooked - logits(model)).abs().max() > 1.0
    embed = fresh.embed.original_component.weight
    lm_head_before = fresh.original_model.get_output_embeddings().original_component.weight.detach().clone()
    assert fresh.original_model.config.tie_word_embeddings
    assert orthogonalize(fresh, r) is fresh
    edited = logits(fresh)
    torch.testing.assert_close(edited, hooked, atol=1e-4, rtol=0)
    unembed = fresh.original_model.get_output_embeddings().original_component.weight
    assert unembed is not embed and torch.equal(unembed, lm_head_before)  # untied, read-out untouched
    assert (embed @ (r / r.norm())).abs().max() < 1e-5
