"""Test helpers importable from any test (`from support import ...`): the shared data folder and tiny random models.

Test modules import these from here, never `from conftest import`: pytest loads several conftest.py files under the
same module name, so which one `conftest` means depends on collection order.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

DATA_DIR = Path(os.environ.get("HARMLENS_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
TINY_NAME = "harmlens-test/tiny-random-llama"


def tiny_llama_config(tokenizer, **overrides):
    """The tiny random Llama's config (2 layers, d_model 64) with the tokenizer's vocabulary and special ids."""
    from transformers import LlamaConfig

    fields = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.1,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaConfig(**(fields | overrides))


def build_tiny_model(
    tokenizer,
    *,
    n_layers: int = 2,
    d_model: int = 64,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_mlp: int = 128,
    seed: int = 0,
    init_range: float = 0.1,
    name: str = TINY_NAME,
):
    """A seeded random-weight Llama bridge with the tokenizer's vocabulary (float32, CPU, eval mode).

    The HF model is at `.original_model`.
    init_range is larger than HF's 0.02 so attention is far from uniform and padding bugs show up.
    """
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import LlamaForCausalLM

    cfg = tiny_llama_config(
        tokenizer,
        hidden_size=d_model,
        intermediate_size=d_mlp,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        initializer_range=init_range,
    )
    cfg.name_or_path = name
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        hf = LlamaForCausalLM(cfg).to(torch.float32).eval()
    bridge = TransformerBridge.boot_transformers(
        name, hf_model=hf, tokenizer=tokenizer, device="cpu", dtype=torch.float32
    )
    bridge.eval()
    bridge.harmlens_name = name
    return bridge
