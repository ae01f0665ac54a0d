"""Shared fixtures: the real embedded model, seeded tiny random Llama bridges, and small prompt slices."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

DATA_DIR = Path(os.environ.get("HARMLENS_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
TINY_NAME = "harmlens-test/tiny-random-llama"


def pytest_configure(config):
    """One torch thread by default: on a shared 2-core box, OpenMP spin-waits make 2 threads 3-5x slower."""
    torch.set_num_threads(int(os.environ.get("HARMLENS_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def model():
    """The real embedded SmolLM2-135M-Instruct as a TransformerBridge (loaded once per session)."""
    from harmlens.probes import load_model

    return load_model(device="cpu")


@pytest.fixture(scope="session")
def embedded_tokenizer():
    """The embedded model's tokenizer (pad token set), without loading its weights."""
    from transformers import AutoTokenizer

    from harmlens.probes.loading import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(str(embedded_model_dir(progress=False)), local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


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
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=d_model,
        intermediate_size=d_mlp,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        initializer_range=init_range,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
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


@pytest.fixture(scope="session")
def make_tiny_model(embedded_tokenizer):
    """Factory: make_tiny_model(n_layers=2, d_model=64, seed=0, name=...) -> a tiny random bridge (not cached)."""

    def make(**kwargs):
        return build_tiny_model(embedded_tokenizer, **kwargs)

    return make


@pytest.fixture(scope="session")
def tiny_model(make_tiny_model):
    """A 2-layer, d_model-64 seeded random Llama using the embedded tokenizer and chat template."""
    return make_tiny_model()


def shared_file(rel: str) -> Path:
    """A file of the shared benchmark data (../shared/data, or HARMLENS_TEST_DATA); the test is skipped without it."""
    path = DATA_DIR / rel
    if not path.exists():
        pytest.skip(f"shared test data not found: {path}")
    return path


@pytest.fixture(scope="session")
def shared_data():
    """Factory: shared_data('jailbreak/x.csv') -> Path of a shared benchmark file; skips the test when it is missing."""
    return shared_file


def read_instructions(kind: str, split: str = "train", n: int = 24, start: int = 0) -> list[str]:
    """Instructions [start:start+n] of ../shared/data/<kind>/<kind>_<split>.json (kind: harmful|harmless)."""
    path = shared_file(f"{kind}/{kind}_{split}.json")
    rows = json.loads(path.read_text())
    return [r["instruction"] for r in rows[start : start + n]]


@pytest.fixture(scope="session")
def load_prompts():
    """Factory: load_prompts(kind, split='train', n=24, start=0) -> list of instructions."""
    return read_instructions


@pytest.fixture(scope="session")
def harmful_prompts():
    """24 harmful training instructions."""
    return read_instructions("harmful", "train", 24)


@pytest.fixture(scope="session")
def harmless_prompts():
    """24 harmless training instructions."""
    return read_instructions("harmless", "train", 24)


@pytest.fixture(scope="session")
def embedded_directions(model, harmful_prompts, harmless_prompts):
    """Directions of the embedded model from the 24 + 24 training prompts (extracted once per session)."""
    from harmlens.probes.directions import extract_directions

    return extract_directions(model, harmful_prompts, harmless_prompts, progress=False)
