"""Shared fixtures: the real embedded model, seeded tiny random Llama bridges, and small prompt slices."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from support import DATA_DIR, TINY_NAME, build_tiny_model

__all__ = ["DATA_DIR", "TINY_NAME", "build_tiny_model"]


def pytest_configure(config):
    """One torch thread by default: on a shared 2-core box, OpenMP spin-waits make 2 threads 3-5x slower. Models
    load in float32 (HARMLENS_DTYPE; subprocesses inherit it): tests compare against exact float32 references,
    while the library's CPU default is bfloat16 where the CPU has it (tests/core/test_dtype_default.py)."""
    torch.set_num_threads(int(os.environ.get("HARMLENS_TEST_THREADS", "1")))
    os.environ.setdefault("HARMLENS_DTYPE", "float32")


@pytest.fixture(scope="session")
def model():
    """The real embedded SmolLM2-135M-Instruct as a TransformerBridge (loaded once per session)."""
    from harmlens.probes import load_model

    return load_model(device="cpu")


@pytest.fixture(scope="session")
def embedded_tokenizer():
    """The embedded model's tokenizer (pad token set), without loading its weights."""
    from transformers import AutoTokenizer

    from harmlens.runtime.loading import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(str(embedded_model_dir(progress=False)), local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


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
