"""Tiny seeded random-weight replicas of the seed model families with their real tokenizers, templates, processors.

Tokenizer, template and processor files come from ../shared/tokenizers (test fixtures, never package data); the
weights are random (2 layers, d_model 64), the architecture classes are the real ones.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from harmlens.runtime.compat import no_torchvision_install

TOKENIZERS_DIR = Path(
    os.environ.get("HARMLENS_TEST_TOKENIZERS", Path(__file__).resolve().parents[2] / "shared" / "tokenizers")
)
TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
TEXT_KV = {**TEXT, "num_key_value_heads": 2, "initializer_range": 0.1, "max_position_embeddings": 4096}
# Qwen2-VL / Qwen2.5-VL image processor defaults (preprocessor_config.json of the published models).
QWEN_VL_IMAGE = {
    "patch_size": 14,
    "merge_size": 2,
    "temporal_patch_size": 2,
    "min_pixels": 3136,
    "max_pixels": 12845056,
}
FAMILIES = ("llama2", "llama3", "qwen2", "llava15", "qwen25vl")
VLM_FAMILIES = ("llava15", "qwen25vl")
# The family's instruction-tuned model whose template and tokenizer the replica carries.
REAL_NAME = {
    "llama2": "meta-llama/Llama-2-7b-chat-hf",
    "llama3": "meta-llama/Meta-Llama-3-8B-Instruct",
    "qwen2": "Qwen/Qwen2-7B-Instruct",
    "llava15": "llava-hf/llava-1.5-7b-hf",
    "qwen25vl": "Qwen/Qwen2.5-VL-7B-Instruct",
}


@dataclass
class Family:
    """A tiny replica: the HF model, its tokenizer (pad set), processor (VLMs) and the TransformerBridge."""

    name: str
    hf: object
    tokenizer: object
    processor: object | None
    bridge: object

    @property
    def is_vlm(self) -> bool:
        return self.processor is not None


def template(name: str) -> str:
    """An official chat template from ../shared/tokenizers/templates."""
    return (TOKENIZERS_DIR / "templates" / name).read_text(encoding="utf-8")


def tokenizer(family: str):
    """The family's real tokenizer with its official chat template and a pad token (a private copy)."""
    return copy.deepcopy(_tokenizer(family))


@cache
def _tokenizer(family: str):
    """The family's real tokenizer with its official chat template and a pad token (as harmlens.load_hf sets)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if family == "llama2":
        tok = AutoTokenizer.from_pretrained(TOKENIZERS_DIR / "llama2")  # legacy: true, as the Hub tokenizer
        tok.chat_template = template("llama_2_chat.jinja")
    elif family == "llama3":  # no BOS post-processor here: the template writes <|begin_of_text|> itself
        tok = PreTrainedTokenizerFast(
            tokenizer_file=str(TOKENIZERS_DIR / "llama3" / "tokenizer.json"),
            bos_token="<|begin_of_text|>",
            eos_token="<|eot_id|>",
            chat_template=template("llama_3_instruct.jinja"),
        )
        folder = tempfile.mkdtemp(prefix="harmlens-llama3-tok-")  # a saved folder, as users load it (TL re-reads it)
        tok.save_pretrained(folder)
        tok = AutoTokenizer.from_pretrained(folder)
    elif family in ("qwen2", "qwen25vl"):  # the config carries Qwen3's template: use Qwen2's
        tok = AutoTokenizer.from_pretrained(TOKENIZERS_DIR / "qwen")
        tok.chat_template = template("qwen2_instruct.jinja" if family == "qwen2" else "qwen2_vl_instruct.jinja")
    elif family == "llava15":
        tok = AutoTokenizer.from_pretrained(TOKENIZERS_DIR / "llava15")
    else:
        raise ValueError(family)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _seeded(build, seed: int):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build().to(torch.float32).eval()


def _text_model(family: str, tok, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    if family == "qwen2":
        cfg = Qwen2Config(vocab_size=len(tok), tie_word_embeddings=True, **TEXT_KV, **ids)
        return _seeded(lambda: Qwen2ForCausalLM(cfg), seed)
    cfg = LlamaConfig(vocab_size=len(tok), tie_word_embeddings=False, **TEXT_KV, **ids)
    return _seeded(lambda: LlamaForCausalLM(cfg), seed)


def _llava(seed: int):
    """LLaVA-1.5's real config (image token 32000, CLIP 336 px in 14 px patches) shrunk to 2 small layers."""
    from transformers import AutoProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    real = json.loads((TOKENIZERS_DIR / "llava15" / "config.json").read_text())
    processor = AutoProcessor.from_pretrained(TOKENIZERS_DIR / "llava15")
    tok = processor.tokenizer
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=336, patch_size=14
    )
    text = LlamaConfig(vocab_size=real["vocab_size"], **TEXT_KV, pad_token_id=real["pad_token_id"])
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=real["image_token_index"],
        vision_feature_layer=real["vision_feature_layer"],
        vision_feature_select_strategy=real["vision_feature_select_strategy"],
        projector_hidden_act=real["projector_hidden_act"],
        tie_word_embeddings=False,
    )
    hf = _seeded(lambda: LlavaForConditionalGeneration(cfg), seed)
    hf.generation_config.pad_token_id = tok.pad_token_id
    return hf, tok, processor


def _qwen25vl(seed: int):
    """Qwen2.5-VL (TransformerLens 4.3 has no Qwen2-VL adapter) with Qwen2-VL's template and image processor."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
    )

    tok = tokenizer("qwen25vl")
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in VISION_TOKENS.items()}
    text = {**TEXT_KV, "vocab_size": len(tok), "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}}
    vision = {
        "depth": 1,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": TEXT["hidden_size"],
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [0],
    }
    cfg = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["image"],
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=ids["start"],
        vision_end_token_id=ids["end"],
        tie_word_embeddings=True,
    )
    hf = _seeded(lambda: Qwen2_5_VLForConditionalGeneration(cfg), seed)
    hf.generation_config.pad_token_id = tok.pad_token_id

    class ImageOnlyProcessor(Qwen2_5_VLProcessor):
        """Qwen2.5-VL's processor without its video processor (that one needs torchvision, not installed here)."""

        def check_argument_for_proper_class(self, attribute_name, arg):
            return None if arg is None else super().check_argument_for_proper_class(attribute_name, arg)

    processor = ImageOnlyProcessor(
        image_processor=Qwen2VLImageProcessor(**QWEN_VL_IMAGE), tokenizer=tok, chat_template=tok.chat_template
    )
    return hf, tok, processor


VISION_TOKENS = {"start": "<|vision_start|>", "image": "<|image_pad|>", "end": "<|vision_end|>"}


def _family_of(hf) -> str:
    return "qwen25vl" if type(hf).__name__.startswith("Qwen2_5_VL") else type(hf).__name__


def boot(hf, tok, processor=None):
    """TransformerBridge.boot_transformers over the replica, as conftest's build_tiny_model does."""
    from transformer_lens.model_bridge import TransformerBridge

    with no_torchvision_install(), without_required_torchvision(_family_of(hf)):
        bridge = TransformerBridge.boot_transformers(
            hf.config.name_or_path, hf_model=hf, tokenizer=tok, device="cpu", dtype=torch.float32
        )
    bridge.eval()
    bridge.harmlens_name = hf.config.name_or_path
    if processor is not None:
        bridge.processor = processor
    return bridge


def hf_model(family: str, seed: int = 0) -> tuple:
    """(HF model, tokenizer, processor or None) of a seeded tiny replica, not yet wrapped by TransformerLens."""
    if family == "llava15":
        hf, tok, processor = _llava(seed)
    elif family == "qwen25vl":
        hf, tok, processor = _qwen25vl(seed)
    else:
        tok, processor = tokenizer(family), None
        hf = _text_model(family, tok, seed)
    # A local folder with no files as the name: TransformerLens would otherwise look the name up on the Hub.
    hf.config.name_or_path = tempfile.mkdtemp(prefix=f"harmlens-tiny-{family}-")
    hf.config.architectures = [type(hf).__name__]  # as a saved checkpoint's config.json records it
    return hf, tok, processor


@contextmanager
def without_required_torchvision(family: str):
    """TransformerLens 4.3 declares torchvision required for its Qwen2.5-VL adapter (for video preprocessing); the
    only torchvision installable here is a CUDA build that breaks this CPU torch, and text + image forwards do not
    use it, so the declaration is lifted while booting when torchvision is absent."""
    if family != "qwen25vl" or importlib.util.find_spec("torchvision") is not None:
        yield
        return
    from transformer_lens.model_bridge.supported_architectures.qwen2_5_vl import Qwen2_5_VLArchitectureAdapter as A

    saved = A.required_libraries
    A.required_libraries = []
    try:
        yield
    finally:
        A.required_libraries = saved


def build_family(family: str, seed: int = 0) -> Family:
    """A seeded tiny replica of one family, booted in TransformerLens."""
    hf, tok, processor = hf_model(family, seed)
    return Family(family, hf, tok, processor, boot(hf, tok, processor))


@cache
def shared_family(family: str) -> Family:
    """build_family(family), built once per test session and shared by every test that uses it."""
    return build_family(family)
