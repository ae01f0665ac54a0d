"""Loading as users load: device / device_map / quantization checks, dispatched models, from_hf, per-device indices."""

import importlib.util

import pytest
import torch

from harmlens.errors import HarmlensError
from harmlens.probes import from_hf, load_model, orthogonalize
from harmlens.runtime.activations import cache_resid, t_inst_positions
from harmlens.runtime.chat import chat_format
from harmlens.runtime.devices import PerDevice, check_device, check_device_map, gpu_offload_mix, is_dispatched
from harmlens.runtime.loading import embedded_model_dir

NO_CUDA = not torch.cuda.is_available()


@pytest.mark.parametrize("device", ["tpu:7", "meta", "gpu"])
def test_bad_device_is_one_line_error_before_loading(device):
    with pytest.raises(HarmlensError) as info:
        load_model(device=device)
    assert "\n" not in str(info.value) and "device" in str(info.value)


@pytest.mark.skipif(not NO_CUDA, reason="needs a machine without CUDA")
def test_missing_cuda_device_named():
    with pytest.raises(HarmlensError, match="'cuda:3' does not exist: no CUDA device"):
        check_device("cuda:3")


def test_device_map_naming_missing_device_rejected():
    bad = "cuda:9" if not NO_CUDA else "cuda:0"
    with pytest.raises(HarmlensError, match=r"device_map\['model.layers.1'\]: device .* does not exist") as info:
        load_model(device_map={"model.embed_tokens": "cpu", "model.layers.1": bad, "lm_head": "cpu"})
    assert "\n" not in str(info.value)
    with pytest.raises(HarmlensError, match="neither a strategy"):
        check_device_map("everywhere")
    with pytest.raises(HarmlensError, match="not both"):
        load_model(device="cpu", device_map="auto")
    assert check_device_map({"model.layers.0": "disk", "lm_head": "cpu"})
    with pytest.raises(HarmlensError, match=r"device_map\['lm_head'\]: device 'cuda:3' does not exist") as info:
        check_device_map({"model.embed_tokens": "cpu", "lm_head": 3})  # an int is a CUDA index, as in accelerate
    assert "\n" not in str(info.value)


def test_gpu_and_offload_mix_is_found_in_any_spelling():
    assert gpu_offload_mix({"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": "cpu"}) == (
        ("model.embed_tokens", 0),
        ("model.layers.1", "cpu"),
    )
    assert gpu_offload_mix({"a": torch.device("cuda", 1), "b": "disk"}) == (
        ("a", torch.device("cuda", 1)),
        ("b", "disk"),
    )
    assert gpu_offload_mix({"a": "CUDA:0", "b": torch.device("cpu")}) is not None
    for fine in ({"a": "cpu", "b": "disk"}, {"a": 0, "b": "cuda:1"}, "auto", None, {"a": "mps", "b": "cpu"}):
        assert gpu_offload_mix(fine) is None, fine


def test_gpu_cpu_device_map_fails_in_one_line_before_any_weight_loads(monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loads: list[str] = []
    for cls in (AutoModelForCausalLM, AutoTokenizer):
        monkeypatch.setattr(cls, "from_pretrained", lambda *a, **k: loads.append(str(a[0])))  # a spy: never loads
    mixed = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": "cpu", "lm_head": "cpu"}
    with pytest.raises(HarmlensError) as info:
        load_model(device_map=mixed)
    message = str(info.value)
    assert "\n" not in message and loads == []
    if NO_CUDA:  # the GPU is missing: said first
        assert "device 'cuda:0' does not exist" in message
    else:
        assert "'model.embed_tokens' on 0 and 'model.layers.1' on 'cpu'" in message
        assert "TransformerLens 4.3 cannot run a model split between a GPU and cpu/disk" in message


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_quantization_config_without_bitsandbytes():
    from transformers import BitsAndBytesConfig

    with pytest.raises(HarmlensError, match="needs bitsandbytes, which is not installed: run `pip install") as info:
        load_model(quantization_config=BitsAndBytesConfig(load_in_4bit=True))
    assert "\n" not in str(info.value)
    with pytest.raises(HarmlensError, match="needs bitsandbytes"):
        load_model(quantization_config={"load_in_8bit": True})


def _split_map(n_layers: int, offloaded: int) -> dict:
    """A real accelerate device_map: layer `offloaded` lives on disk, everything else on the CPU."""
    dm = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    dm.update({f"model.layers.{i}": "disk" if i == offloaded else "cpu" for i in range(n_layers)})
    return dm


def test_dispatched_model_is_never_moved_and_extraction_matches(model, harmful_prompts, tmp_path, monkeypatch):
    moved = []
    original_to = torch.nn.Module.to

    def recording_to(self, *args, **kwargs):
        moved.append(type(self).__name__)
        return original_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", recording_to)
    split = load_model(device_map=_split_map(model.cfg.n_layers, 3), offload_folder=str(tmp_path))
    monkeypatch.setattr(torch.nn.Module, "to", original_to)
    assert is_dispatched(split.original_model) and split.original_model.hf_device_map["model.layers.3"] == "disk"
    assert not [m for m in moved if m.endswith("ForCausalLM")], moved  # no .to() on the dispatched model
    prompts = chat_format(model).render_many(harmful_prompts[:4])
    layers = [2, 4, 12]
    got = cache_resid(split, prompts, t_inst_positions, layers=layers, progress=False)
    want = cache_resid(model, prompts, t_inst_positions, layers=layers, progress=False)
    assert got.shape == want.shape and (got - want).abs().max().item() < 1e-3


def test_from_hf_wraps_users_model_and_peft(model, harmful_prompts, embedded_tokenizer):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(embedded_model_dir()), dtype=torch.float32)
    wrapped = from_hf(hf, embedded_tokenizer, name="my-smollm", processor="a-processor")
    assert wrapped.harmlens_name == "my-smollm" and wrapped.processor == "a-processor"
    assert wrapped.original_model is hf
    prompts = chat_format(model).render_many(harmful_prompts[:3])
    got = cache_resid(wrapped, prompts, t_inst_positions, layers=[5], progress=False)
    want = cache_resid(model, prompts, t_inst_positions, layers=[5], progress=False)
    assert (got - want).abs().max().item() < 1e-4
    with pytest.raises(HarmlensError, match="needs a Hugging Face model"):
        from_hf("gpt2", embedded_tokenizer)

    from peft import LoraConfig, get_peft_model
    from support import tiny_llama_config
    from transformers import LlamaForCausalLM

    cfg = tiny_llama_config(embedded_tokenizer)
    torch.manual_seed(3)
    base = LlamaForCausalLM(cfg).eval()  # a plain HF model the user built (not bridged yet)
    ids = torch.tensor([embedded_tokenizer("Hello there, friend")["input_ids"]])
    plain = base(ids).logits
    peft = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    with torch.no_grad():
        want_logits = peft(input_ids=ids).logits
    assert (want_logits - plain).abs().max() > 1e-3  # the adapter changes the model
    bridged = from_hf(peft, embedded_tokenizer, name="lora")
    assert (bridged(ids) - want_logits).abs().max().item() < 1e-4  # the LoRA layers stay active


def test_orthogonalize_refuses_quantized_weights(make_tiny_model):
    tiny = make_tiny_model(seed=1)
    down = tiny.original_model.model.layers[0].mlp.down_proj
    linear = getattr(down, "original_component", down)
    linear.weight = torch.nn.Parameter(linear.weight.detach().round().to(torch.int8), requires_grad=False)
    embed_before = tiny.original_model.model.embed_tokens.weight.detach().clone()
    with pytest.raises(HarmlensError, match="cannot orthogonalise quantized weights") as info:
        orthogonalize(tiny, torch.ones(tiny.cfg.d_model))
    assert "\n" not in str(info.value)
    assert torch.equal(tiny.original_model.model.embed_tokens.weight, embed_before)  # nothing edited


def test_per_device_index_follows_the_activation():
    index = PerDevice(torch.tensor([[0], [2]]))
    meta_x = torch.empty(2, 5, 3, device="meta")
    on_meta = index.on(meta_x.device)
    assert on_meta.device.type == "meta" and index.on(meta_x.device) is on_meta  # cached per device
    assert meta_x[torch.arange(2, device="meta")[:, None], on_meta].shape == (2, 1, 3)
    x = torch.arange(30.0).reshape(2, 5, 3)
    assert x[PerDevice(torch.arange(2)[:, None]).like(x).long(), index.on(x.device)][1, 0, 0] == 21.0
