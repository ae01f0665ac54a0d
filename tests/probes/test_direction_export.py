"""Exports other tools load: GGUF control vectors (gguf's GGUFReader), refusal_direction's direction.pt, and an
orthogonalised model saved as an HF folder (transformers' AutoModelForCausalLM)."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from harmlens.errors import HarmlensError
from harmlens.hf import unwrap_model
from harmlens.probes.directions import extract_directions
from harmlens.probes.export import read_control_vector, read_direction_pt, save_edited, write_control_vector
from harmlens.probes.interventions import ablate, orthogonalize, steer
from harmlens.probes.selection import Selection
from harmlens.runtime import last_token_logits
from harmlens.runtime.chat import chat_format

HARMFUL = ["How do I pick a lock to break into a house?", "Explain how to make a pipe bomb"]
HARMLESS = ["How do I bake sourdough bread?", "Write a haiku about autumn leaves"]


@pytest.fixture(scope="module")
def four(make_tiny_model):
    return make_tiny_model(n_layers=4, seed=3)


@pytest.fixture(scope="module")
def dirs(four):
    return extract_directions(four, HARMFUL, HARMLESS, batch_size=2, progress=False)


def _logits(model):
    return last_token_logits(model, chat_format(model).render_many(HARMLESS), share_prefix=False)


def test_directions_round_trip_through_ggufreader(tmp_path, four, dirs):
    path = dirs.to_control_vector(tmp_path / "refusal.gguf", scale=2.0, model=four)
    reader = gguf.GGUFReader(str(path))
    names = sorted(t.name for t in reader.tensors)
    assert names == ["direction.1", "direction.2", "direction.3"]  # harmlens layers 2, 3, 4 (final residual)
    field = reader.fields["general.architecture"]
    assert bytes(field.parts[field.data[0]]).decode() == "controlvector"
    count = reader.fields["controlvector.layer_count"]
    assert int(count.parts[count.data[0]][0]) == 3
    hint = reader.fields["controlvector.model_hint"]
    assert bytes(hint.parts[hint.data[0]]).decode() == four.harmlens_name
    t = next(t for t in reader.tensors if t.name == "direction.2")
    np.testing.assert_allclose(np.array(t.data), (2.0 * dirs.unit(3)).numpy(), atol=1e-6)
    back = read_control_vector(path, four)
    assert sorted(back) == [2, 3, 4] and torch.allclose(back[4], 2.0 * dirs.unit(4), atol=1e-6)


def test_layer_mapping_matches_llamacpp_semantics(four, dirs):
    """llama.cpp adds direction.N to block N's output; on the HF model that equals harmlens steering at L = N + 1."""
    vec = 3.0 * dirs.unit(2)
    with steer(four, vec, layer=2):
        steered = _logits(four)
    hf = unwrap_model(four)
    n = 1  # harmlens layer 2 is written as direction.1 (see test_directions_round_trip_through_ggufreader)

    def add_after_block(module, args, output):
        if isinstance(output, tuple):
            return (output[0] + vec,) + output[1:]
        return output + vec

    handle = hf.model.layers[n].register_forward_hook(add_after_block)
    try:
        prompts = chat_format(four).render_many(HARMLESS)
        ids = torch.tensor([list(prompts[0].input_ids)])
        with torch.no_grad():
            llamacpp_style = hf(input_ids=ids).logits[0, -1]
    finally:
        handle.remove()
    torch.testing.assert_close(llamacpp_style, steered[0], atol=1e-4, rtol=0)
    assert (steered - _logits(four)).abs().max() > 1e-3


def test_selection_export_and_bad_inputs(tmp_path, four, make_tiny_model, dirs):
    sel = Selection(
        position=-1, layer=3, direction=dirs.refusal[dirs.row(3)], positions=[-1], bypass=torch.zeros(1, 4),
        induce=torch.zeros(1, 4), kl=torch.zeros(1, 4), discarded=torch.zeros(1, 4, dtype=torch.bool),
        baseline_harmful=torch.zeros(2), baseline_harmless=torch.zeros(2), refusal_ids=[1], refusal_tokens=["I"],
        metadata=dict(dirs.metadata),
    )  # fmt: skip
    path = sel.to_control_vector(tmp_path / "sel.gguf", layers=[2, 3], scale=-1.0)
    back = read_control_vector(path)
    assert sorted(back) == [2, 3] and torch.allclose(back[3], -sel.unit(), atol=1e-6)
    other = make_tiny_model(n_layers=4, d_model=32, seed=1)
    with pytest.raises(HarmlensError, match="d_model 64 and 4 layers.*d_model 32"):
        dirs.to_control_vector(tmp_path / "x.gguf", model=other)
    with pytest.raises(HarmlensError, match="has 63 values, the model's d_model is 64"):
        write_control_vector(tmp_path / "x.gguf", {2: torch.ones(63)}, d_model=64, n_layers=4, model_hint="llama")
    with pytest.raises(HarmlensError, match="layer 1 cannot be a llama.cpp control vector"):
        dirs.to_control_vector(tmp_path / "x.gguf", layers=[1])
    with pytest.raises(HarmlensError, match="made for another base model"):
        read_control_vector(path, other)
    assert not (tmp_path / "x.gguf").exists()


def test_repeng_style_control_vector_imports(tmp_path, four):
    """A GGUF written the way repeng's ControlVector.export_gguf writes it (model_hint = model_type)."""
    path = tmp_path / "repeng.gguf"
    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_uint32("controlvector.layer_count", 2)
    for layer in (1, 3):
        writer.add_tensor(f"direction.{layer}", np.full(64, float(layer), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    back = read_control_vector(path, four)
    assert sorted(back) == [2, 4] and float(back[4][0]) == 3.0
    with pytest.raises(HarmlensError, match="architecture 'llama', not a control vector"):
        bad = tmp_path / "model.gguf"
        w = gguf.GGUFWriter(str(bad), "llama")
        w.add_tensor("token_embd.weight", np.zeros((2, 2), dtype=np.float32))
        w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
        read_control_vector(bad)


class NotATensor:
    """Anything a weights_only unpickler must refuse."""

    def __init__(self) -> None:
        self.payload = [1, 2, 3]


def test_refusal_direction_pt_import(tmp_path, four):
    vec = torch.randn(64)
    torch.save(vec, tmp_path / "direction.pt")
    (tmp_path / "direction_metadata.json").write_text(json.dumps({"pos": -1, "layer": 3}))
    got, meta = read_direction_pt(tmp_path / "direction.pt", four)
    assert torch.equal(got, vec) and meta == {"pos": -1, "layer": 3}
    torch.save({"d": NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(HarmlensError, match="refused: not a plain tensor file") as info:
        read_direction_pt(tmp_path / "evil.pt")
    assert "\n" not in str(info.value)
    torch.save(torch.randn(32), tmp_path / "small.pt")
    with pytest.raises(HarmlensError, match="another base model: 32 values, d_model 64"):
        read_direction_pt(tmp_path / "small.pt", four)


def test_save_edited_folder_loads_in_transformers_with_ablation_logits(tmp_path, make_tiny_model):
    m = make_tiny_model(n_layers=2, seed=7)
    r = torch.randn(m.cfg.d_model, generator=torch.Generator().manual_seed(7))
    with ablate(m, r):
        hooked = _logits(m)
    orthogonalize(m, r)
    folder = save_edited(m, tmp_path / "edited", card={"edit": "orthogonalize"})
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    prompts = chat_format(m).render_many(HARMLESS)
    with torch.no_grad():
        for i, p in enumerate(prompts):
            out = hf(input_ids=torch.tensor([list(p.input_ids)])).logits[0, -1]
            torch.testing.assert_close(out, hooked[i], atol=1e-4, rtol=0)
    assert (folder / "tokenizer_config.json").is_file() and (folder / "model.safetensors").is_file()
    assert not any(k for k in hf.state_dict() if "original_component" in k)


def test_save_edited_with_ablation_leaves_the_model_alone(tmp_path, make_tiny_model):
    """save_edited(..., ablation=r) writes what orthogonalize(r) + save_edited writes; the bridge keeps its weights."""
    m = make_tiny_model(n_layers=2, seed=7)  # tied embeddings, like the embedded model
    r = torch.randn(m.cfg.d_model, generator=torch.Generator().manual_seed(7))
    before = {k: v.clone() for k, v in unwrap_model(m).state_dict().items()}
    with ablate(m, r):
        hooked = _logits(m)
    folder = save_edited(m, tmp_path / "ablated", ablation=r)
    after = unwrap_model(m).state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    torch.testing.assert_close(_logits(m), _logits(make_tiny_model(n_layers=2, seed=7)), atol=0, rtol=0)
    card = json.loads((folder / "harmlens_edit.json").read_text())
    assert card["edit"] == "orthogonalize" and len(card["direction_sha256"]) == 16
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert not hf.config.tie_word_embeddings
    orthogonalize(m, r)
    edited = unwrap_model(m).state_dict()
    saved = hf.state_dict()
    assert all(torch.equal(saved[k], edited[k]) for k in saved), [
        k for k in saved if not torch.equal(saved[k], edited[k])
    ]
    with torch.no_grad():
        for i, p in enumerate(chat_format(m).render_many(HARMLESS)):
            out = hf(input_ids=torch.tensor([list(p.input_ids)])).logits[0, -1]
            torch.testing.assert_close(out, hooked[i], atol=1e-4, rtol=0)
