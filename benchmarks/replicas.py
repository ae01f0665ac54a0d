"""Random-weight replicas of real architectures with their real tokenizers, templates and processors, saved as HF
folders: Meta-Llama-3-8B-Instruct (and Llama-3.2-1B / a tiny one) and LLaVA-1.5, for checks where real weights cannot
travel. The Llama-3 recipe is ../shared/gpu-evidence/make_replica.py's (seed 0, initializer_range 0.02, bf16).

Tokenizer files come from a tokenizers folder (default_tokenizers(): ../shared/tokenizers next to the repository):
llama3/ and templates/llama_3_instruct.jinja for Llama-3, llava15/ for LLaVA-1.5.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def default_tokenizers() -> Path:
    """$HARMLENS_TEST_TOKENIZERS, else ../shared/tokenizers next to the repository, else shared/tokenizers inside it
    (where a copy of the working tree carries it, e.g. to a device machine)."""
    if os.environ.get("HARMLENS_TEST_TOKENIZERS"):
        return Path(os.environ["HARMLENS_TEST_TOKENIZERS"])
    beside, inside = REPO.parent / "shared" / "tokenizers", REPO / "shared" / "tokenizers"
    return inside if inside.is_dir() and not beside.is_dir() else beside


DEFAULT_TOKENIZERS = default_tokenizers()
# Meta-Llama-3-8B-Instruct / Llama-3.2-1B-Instruct configs (hidden, mlp, layers, heads, kv heads).
LLAMA3_SIZES: dict[str, dict] = {
    "8b": dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, rope_theta=500000.0, max_position_embeddings=8192, tie_word_embeddings=False,
    ),
    "1b": dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, rope_theta=500000.0, max_position_embeddings=8192, tie_word_embeddings=True,
    ),
    "tiny": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=False,
    ),
}  # fmt: skip
MARKER = "replica.json"  # what a folder holds, so a later run reuses it instead of building it again


def _reusable(out: Path, recipe: dict) -> bool:
    marker = out / MARKER
    return marker.is_file() and json.loads(marker.read_text()) == recipe


def _mark(out: Path, recipe: dict) -> None:
    (out / MARKER).write_text(json.dumps(recipe))


def llama3_replica(out: str | Path, size: str = "8b", *, tokenizers: str | Path = DEFAULT_TOKENIZERS) -> Path:
    """Build (or reuse) the Llama-3 replica of `size` in `out`: real tokenizer and chat template, seeded weights, bf16;
    built on the GPU when there is one (the 8B replica takes ~30 s there)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if size not in LLAMA3_SIZES:
        raise ValueError(f"unknown replica size {size!r}; choose from {', '.join(LLAMA3_SIZES)}")
    out, tdir = Path(out), Path(tokenizers)
    recipe = {"arch": "llama3", "size": size, "seed": 0}
    if _reusable(out, recipe):
        return out
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(tdir / "llama3" / "tokenizer.json"),
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        chat_template=(tdir / "templates" / "llama_3_instruct.jinja").read_text(encoding="utf-8"),
    )
    tok.save_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    cfg = LlamaConfig(vocab_size=128256, initializer_range=0.02, **LLAMA3_SIZES[size], **ids)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.random.fork_rng(devices=[0] if device == "cuda" else []):
        torch.manual_seed(0)
        with torch.device(device):
            model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.generation_config.pad_token_id = tok.eos_token_id
    model.save_pretrained(out, max_shard_size="5GB")
    del model
    if device == "cuda":
        torch.cuda.empty_cache()  # the check loads the replica twice next
    _mark(out, recipe)
    return out


def llava_replica(out: str | Path, *, tokenizers: str | Path = DEFAULT_TOKENIZERS) -> Path:
    """Build (or reuse) a tiny LLaVA-1.5 replica in `out`: the real config's image token, CLIP 336 px / 14 px patches,
    vision feature layer and projector, shrunk to 2 small layers (seeded), with the real processor and tokenizer."""
    from transformers import (
        AutoProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    out, tdir = Path(out), Path(tokenizers) / "llava15"
    recipe = {"arch": "llava15", "size": "tiny", "seed": 0}
    if _reusable(out, recipe):
        return out
    real = json.loads((tdir / "config.json").read_text())
    processor = AutoProcessor.from_pretrained(tdir)
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=336, patch_size=14
    )
    text = LlamaConfig(
        vocab_size=real["vocab_size"], hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, initializer_range=0.1, max_position_embeddings=4096,
        pad_token_id=real["pad_token_id"],
    )  # fmt: skip
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=real["image_token_index"],
        vision_feature_layer=real["vision_feature_layer"],
        vision_feature_select_strategy=real["vision_feature_select_strategy"],
        projector_hidden_act=real["projector_hidden_act"],
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlavaForConditionalGeneration(cfg).eval()
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    _mark(out, recipe)
    return out
