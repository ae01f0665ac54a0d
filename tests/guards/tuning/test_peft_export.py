"""Adapters in PEFT's layout, loaded back by peft's own PeftModel.from_pretrained; Hub folders with a model card."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel

from harmlens.errors import HarmlensError
from harmlens.guards.tuning.adapter import Adapter, arch_signature, base_name
from harmlens.guards.tuning.peft_export import adapter_card, load_adapter, same_weights, save_peft
from harmlens.hf import unwrap_model
from harmlens.hub import hub_folder, push_to_hub

IDS = torch.tensor([[1, 20, 30, 40, 50, 60]])


def random_adapter(model, seed: int = 0) -> Adapter:
    """A LoRA adapter with random A and B for q_proj and down_proj of every layer (B non-zero, so it changes logits)."""
    hf = unwrap_model(model)
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for i in range(model.cfg.n_layers):
        for mod in ("self_attn.q_proj", "mlp.down_proj"):
            lin = hf.get_submodule(f"model.layers.{i}.{mod}")
            weights[f"model.layers.{i}.{mod}.lora_A.weight"] = 0.1 * torch.randn(4, lin.in_features, generator=g)
            weights[f"model.layers.{i}.{mod}.lora_B.weight"] = 0.1 * torch.randn(lin.out_features, 4, generator=g)
    lora = {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["down_proj", "q_proj"], "layers": None}
    return Adapter(base_name(model), lora, weights, {"arch": arch_signature(hf), "steps": 3})


def test_peft_folder_loads_in_peft_and_matches_harmlens_merge(tmp_path, make_tiny_model):
    base = make_tiny_model(seed=11)
    adapter = random_adapter(base)
    folder = save_peft(adapter, tmp_path / "peft")
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["base_model_name_or_path"] == adapter.base_model
    with torch.no_grad():
        merged = adapter.merge(base)(IDS).logits
        plain = unwrap_model(make_tiny_model(seed=11))
        before = plain(IDS).logits
        peft_model = PeftModel.from_pretrained(plain, str(folder))
        via_peft = peft_model(IDS).logits
    assert (merged - before).abs().max() > 1e-3
    torch.testing.assert_close(via_peft, merged, atol=1e-5, rtol=0)
    back = load_adapter(folder, base)
    assert same_weights(back, adapter) and back.lora == adapter.lora and back.meta["steps"] == 3


def test_old_harmlens_adapters_still_load_and_convert(tmp_path, make_tiny_model):
    base = make_tiny_model(seed=11)
    adapter = random_adapter(base, seed=2)
    old = adapter.save(tmp_path / "old")
    loaded = load_adapter(old, base)
    assert same_weights(loaded, adapter)
    assert same_weights(load_adapter(save_peft(loaded, tmp_path / "new")), adapter)
    with pytest.raises(HarmlensError, match="not an adapter folder"):
        load_adapter(tmp_path)


def test_peft_folder_from_another_base_model_is_refused(tmp_path, make_tiny_model):
    base = make_tiny_model(seed=11)
    folder = save_peft(random_adapter(base), tmp_path / "peft")
    other = make_tiny_model(seed=11, d_model=32, name="someone/other-model")
    with pytest.raises(HarmlensError, match="made for another base model") as info:
        load_adapter(folder, other)
    assert "\n" not in str(info.value)


def test_hub_folder_card_and_push_offline(tmp_path, make_tiny_model, monkeypatch):
    base = make_tiny_model(seed=11)
    adapter = random_adapter(base)
    card = adapter_card(adapter, figures={"refusal rate (harmful, n=32)": "94%"}, license="apache-2.0")
    folder = hub_folder(save_peft(adapter, tmp_path / "peft"), tmp_path / "hub", card)
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n") and "base_model: " + adapter.base_model in text and "license: apache-2.0" in text
    assert "library_name: peft" in text and "| refusal rate (harmful, n=32) | 94% |" in text
    files = push_to_hub(folder, "someone/harmlens-test-adapter", dry_run=True)
    assert files == ["README.md", "adapter_config.json", "adapter_model.safetensors", "harmlens_adapter_meta.json"]
    with pytest.raises(HarmlensError, match="invalid Hub repo id"):
        push_to_hub(folder, "not a repo id!", dry_run=True)
    with pytest.raises(HarmlensError, match="not Hub-ready: no README.md"):
        push_to_hub(tmp_path / "peft", "someone/x", dry_run=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the real client refuses at the first request: the upload call
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    with pytest.raises(HarmlensError, match="cannot upload .* someone/harmlens-test-adapter: OfflineModeIsEnabled"):
        push_to_hub(folder, "someone/harmlens-test-adapter", token="hf_offline_test_token")
