"""harmlens's GGUF control vector checked against llama.cpp itself (examples/llamacpp_control_vector_check.py): the
vector harmlens writes for layer L (direction.{L-1}) changes llama.cpp's next-token logits as harmlens steering at L
changes HF's, and the two wrong mappings (direction.{L}, direction.{L-2}) do not.

Skipped unless llama-cpp-python is importable here or HARMLENS_LLAMACPP_PYTHON names a python that has it (it is
built in its own venv: see the example's docstring), e.g.
HARMLENS_LLAMACPP_PYTHON=/work/venv-llamacpp/bin/python python -m pytest -q tests/probes/test_llamacpp_control_vector.py
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "llamacpp_control_vector_check.py"
LAYER = 10


def llamacpp_python() -> str | None:
    """A python that can import llama_cpp: this one, or HARMLENS_LLAMACPP_PYTHON."""
    if importlib.util.find_spec("llama_cpp") is not None:
        return sys.executable
    other = os.environ.get("HARMLENS_LLAMACPP_PYTHON")
    if other and subprocess.run([other, "-c", "import llama_cpp"], capture_output=True).returncode == 0:
        return other
    return None


PYTHON = llamacpp_python()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PYTHON is None, reason="llama_cpp is not importable (set HARMLENS_LLAMACPP_PYTHON)"),
]


def test_control_vector_layer_mapping_matches_llamacpp(model, embedded_directions, tmp_path):
    spec = importlib.util.spec_from_file_location("llamacpp_control_vector_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    meta = check.prepare(tmp_path, layer=LAYER, strength=24.0, n_prompts=4, model=model, directions=embedded_directions)
    assert meta["vectors"] == {"harmlens.gguf": LAYER - 1, "wrong_N=L.gguf": LAYER, "wrong_N=L-2.gguf": LAYER - 2}
    proc = subprocess.run(
        [str(PYTHON), str(SCRIPT), "check", "--out", str(tmp_path)], capture_output=True, text=True, timeout=1200
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout)
    f32, q4 = res["f32"], res["q4_1"]
    right = f"harmlens.gguf (direction.{LAYER - 1})"
    wrong = [f"wrong_N=L.gguf (direction.{LAYER})", f"wrong_N=L-2.gguf (direction.{LAYER - 2})"]
    # F32 weights: llama.cpp's direction.{L-1} is harmlens steering at L, up to float rounding
    assert f32[right][f"vs_hf_L{LAYER}"]["cosine"] > 0.9999, f32[right]
    assert f32[right][f"vs_hf_L{LAYER}"]["top1_steered"] == "4/4"
    # each vector matches HF steering at its own N + 1 best, and a wrong mapping is far from steering at L
    for name, best in ((right, 1), (wrong[0], 2), (wrong[1], 0)):
        cos = f32[name]["cosine_vs_hf_L-1_L_L+1"]
        assert cos.index(max(cos)) == best, (name, cos)
    assert all(f32[w][f"vs_hf_L{LAYER}"]["cosine"] < 0.95 for w in wrong), f32
    # the shipped Q4_1 file: noisier (8-bit activations), still clearly closest under harmlens's mapping
    assert q4[right][f"vs_hf_L{LAYER}"]["cosine"] > 0.97, q4[right]
    assert all(q4[w][f"vs_hf_L{LAYER}"]["cosine"] < 0.92 for w in wrong), q4
