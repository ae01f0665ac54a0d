"""An orthogonalised model saved as an HF folder (save_edited) is servable by vLLM: greedy replies of vLLM on the
saved folder equal HF greedy generation under the ablation hooks on the original model, and evaluate_asr's
ablation condition reaches vLLM that way. One vLLM engine (the ablated folder) for the whole module."""

import json
from pathlib import Path

import pytest

from harmlens.attacks.evaluate import evaluate_asr
from harmlens.probes.conditions import condition_backend
from harmlens.probes.interventions import ablate, direction_sha256
from harmlens.runtime import GenerationConfig, HFBackend
from harmlens.runtime.chat import chat_format
from harmlens.runtime.vllm_engine import model_engines, vllm_available

pytestmark = pytest.mark.skipif(not vllm_available(), reason="vllm is not installed (pip install harmlens[vllm])")

CONFIG = GenerationConfig(max_new_tokens=24, progress=False)
LAYER = 10  # the embedded model's refusal direction at layer 10: ablating it changes every greedy reply below


@pytest.fixture(scope="module")
def direction(embedded_directions):
    return embedded_directions.refusal[embedded_directions.row(LAYER)]


@pytest.fixture(scope="module")
def ablated_engine(model, direction):
    """vLLM over the embedded model orthogonalised against the direction (float32, short context), saved by
    save_edited to a temporary folder; the model itself is not edited."""
    engine = condition_backend(model, "vllm", ablation=direction, max_model_len=512)
    yield engine
    model_engines(model).pop(direction_sha256(model, direction), None)


def test_vllm_on_the_saved_folder_equals_hf_ablation_hooks(model, direction, ablated_engine, harmful_prompts,
                                                           harmless_prompts):  # fmt: skip
    folder = Path(ablated_engine.weights)
    card = json.loads((folder / "harmlens_edit.json").read_text())
    assert card == {"edit": "orthogonalize", "direction_sha256": direction_sha256(model, direction)}
    assert json.loads((folder / "config.json").read_text())["tie_word_embeddings"] is False
    prompts = chat_format(model).render_many(harmful_prompts[:4] + harmless_prompts[:4])
    with ablate(model, direction):
        hooked = HFBackend(model).generate_ids(prompts, CONFIG)
    served = ablated_engine.generate_ids(prompts, CONFIG)
    plain = HFBackend(model).generate_ids(prompts, CONFIG)  # the bridge was not edited
    same = sum(a == b for a, b in zip(hooked, served))
    print(f"vLLM on the orthogonalised folder vs HF ablation hooks: {same}/{len(prompts)} greedy replies equal")
    assert same >= 6, (same, hooked, served)  # float32 both sides; measured 8/8 (docs/formats.md)
    assert sum(a != b for a, b in zip(served, plain)) >= 1  # the edit changes replies, so the check can fail
    assert condition_backend(model, "vllm", ablation=direction) is ablated_engine  # one engine per direction


def test_evaluate_asr_ablation_condition_on_vllm(model, direction, ablated_engine, harmful_prompts, tmp_path):
    kw = dict(settings=["none", "swap"], max_new_tokens=24, progress=False, ablation=direction)
    on_vllm = evaluate_asr(model, harmful_prompts[:4], backend="vllm", out=tmp_path, **kw)
    on_hf = evaluate_asr(model, harmful_prompts[:4], backend="hf", **kw)
    assert condition_backend(model, "vllm", ablation=direction) is ablated_engine  # served by the module's engine
    assert on_vllm.meta["ablation"] == on_hf.meta["ablation"] == direction_sha256(model, direction)
    header = json.loads((tmp_path / "results.jsonl").read_text().splitlines()[0])
    assert header["backend"] == "vllm" and header["ablation"] == direction_sha256(model, direction)
    same = sum(a["reply"] == b["reply"] for a, b in zip(on_vllm.records, on_hf.records))
    print(f"evaluate_asr ablation condition, vllm vs hf: {same}/{len(on_hf.records)} replies equal")
    assert same >= len(on_hf.records) - 2, same
