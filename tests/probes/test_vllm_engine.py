"""The vllm backend: one-line errors without vLLM; with vllm(-cpu) installed, token-id prompts, greedy replies that
agree with HF generate and with LLM.generate, seeded sampling, a prefill read refused by an engine without the worker
extension, steered conditions refused, evaluate_asr(backend='vllm') recorded in the report."""

import subprocess
import sys

import pytest

from harmlens.errors import HarmlensError
from harmlens.runtime import GenerationConfig, PrefillRead, cut_at_stop, generate, get_backend
from harmlens.runtime.chat import chat_format
from harmlens.runtime.vllm_engine import INSTALL_HINT, vllm_available

needs_vllm = pytest.mark.skipif(not vllm_available(), reason="vllm is not installed (pip install harmlens[vllm])")


@pytest.mark.skipif(vllm_available(), reason="vllm is installed")
def test_missing_vllm_says_how_to_install(tiny_model, tmp_path):
    with pytest.raises(HarmlensError, match="pip install harmlens\\[vllm\\]") as info:
        get_backend(tiny_model, "vllm")
    assert str(info.value) == INSTALL_HINT
    cmd = [sys.executable, "-m", "harmlens.attacks", "run", "--backend", "vllm", "--out", str(tmp_path), "--limit", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == f"error: {INSTALL_HINT}"


def test_unknown_backend_rejected(tiny_model):
    with pytest.raises(HarmlensError, match="unknown generation backend 'tgi'"):
        get_backend(tiny_model, "tgi")


@pytest.fixture(scope="session")
def vllm_engine(model):
    """One small vLLM engine over the embedded model's weights (float32, short context) for the whole session."""
    return get_backend(model, "vllm", max_model_len=512)


@needs_vllm
def test_greedy_replies_agree_with_hf(model, vllm_engine, harmful_prompts, harmless_prompts):
    prompts = chat_format(model).render_many(harmful_prompts[:4] + harmless_prompts[:4])
    config = GenerationConfig(max_new_tokens=24, progress=False)
    hf_ids = get_backend(model, "hf").generate_ids(prompts, config)
    vl_ids = vllm_engine.generate_ids(prompts, config)
    same = sum(a == b for a, b in zip(hf_ids, vl_ids))
    assert same >= 6, (same, hf_ids, vl_ids)  # float32 on both sides; greedy is not bit-identical across kernels
    assert generate(model, prompts, max_new_tokens=24, backend=vllm_engine, progress=False) == [
        model.tokenizer.decode(ids, skip_special_tokens=True) for ids in vl_ids
    ]
    assert get_backend(model, "vllm") is vllm_engine  # started once per model


@needs_vllm
def test_step_loop_equals_llm_generate_and_samples_by_seed(model, vllm_engine, harmless_prompts):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    prompts = chat_format(model).render_many(harmless_prompts[:4])
    greedy = GenerationConfig(max_new_tokens=16, progress=False)
    params = SamplingParams(max_tokens=16, temperature=0.0, stop_token_ids=vllm_engine.stops)
    outs = vllm_engine.llm.generate([TokensPrompt(prompt_token_ids=list(p.input_ids)) for p in prompts], params)
    plain = [cut_at_stop(o.outputs[0].token_ids, vllm_engine.stops) for o in outs]
    assert vllm_engine.generate_ids(prompts, greedy) == plain  # the engine's own step loop: the same tokens
    sampled = greedy.replace(do_sample=True, temperature=1.0, seed=3)
    first, again = vllm_engine.generate_ids(prompts, sampled), vllm_engine.generate_ids(prompts, sampled)
    other = vllm_engine.generate_ids(prompts, sampled.replace(seed=4))
    assert first == again and first != other


@needs_vllm
def test_prefill_read_needs_the_worker_extension(model, vllm_engine):
    prompts = chat_format(model).render_many(["Say hi"])
    read = PrefillRead((1,), lambda i: [0], lambda idx, acts: [False] * len(idx))
    with pytest.raises(HarmlensError, match="start the engine with reads=True") as info:
        vllm_engine.generate_ids(prompts, GenerationConfig(max_new_tokens=2), read=read)
    assert "\n" not in str(info.value)


@needs_vllm
def test_token_ids_reach_vllm_unchanged(model, vllm_engine):
    ids = list(chat_format(model).render("Say hi").input_ids)
    (prompt_out,) = vllm_engine.llm.generate(
        [__import__("vllm.inputs", fromlist=["TokensPrompt"]).TokensPrompt(prompt_token_ids=ids)],
        __import__("vllm", fromlist=["SamplingParams"]).SamplingParams(max_tokens=1, temperature=0.0),
        use_tqdm=False,
    )
    assert list(prompt_out.prompt_token_ids) == ids


@needs_vllm
def test_steered_condition_refuses_vllm(model, vllm_engine, embedded_directions):
    from harmlens.probes.interventions import steer

    r = embedded_directions.refusal[embedded_directions.row(10)]
    with steer(model, r, 10), pytest.raises(HarmlensError, match="vLLM cannot run activation hooks") as info:
        generate(model, ["Say hi"], backend="vllm", progress=False)
    assert "\n" not in str(info.value)


@needs_vllm
def test_evaluate_asr_on_vllm_records_backend_and_agrees(model, vllm_engine, harmful_prompts, tmp_path):
    from harmlens.attacks.evaluate import evaluate_asr

    kw = dict(settings=["none", "swap"], max_new_tokens=24, progress=False)
    on_vllm = evaluate_asr(model, harmful_prompts[:6], backend="vllm", out=tmp_path, **kw)
    on_hf = evaluate_asr(model, harmful_prompts[:6], backend="hf", **kw)
    assert on_vllm.meta["backend"] == "vllm" and on_hf.meta["backend"] == "hf"
    assert '"backend": "vllm"' in (tmp_path / "results.jsonl").read_text().splitlines()[0]
    agree = sum(a["success"] == b["success"] for a, b in zip(on_vllm.records, on_hf.records))
    assert agree >= len(on_hf.records) - 2, agree
    with pytest.raises(HarmlensError, match="different run"):  # a resumed run cannot switch engines
        evaluate_asr(model, harmful_prompts[:6], backend="hf", out=tmp_path, **kw)
