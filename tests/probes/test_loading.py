"""Model loading: embedded default, local folders, cache conversion, offline errors."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harmlens.errors import HarmlensError
from harmlens.runtime.loading import embedded_gguf_path, embedded_model_dir, load_model, model_name, resolve_model_path


def test_embedded_gguf_found_through_metadata():
    path = embedded_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000


def test_default_model_is_embedded_and_tokenizer_reachable(model):
    assert model_name(model) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert model.cfg.n_layers == 30 and model.cfg.d_model == 576
    assert model.tokenizer.pad_token_id is not None
    assert "<|im_start|>" in model.tokenizer.chat_template


def test_local_folder_loads_offline_and_matches_default(model):
    folder = embedded_model_dir()
    other = load_model(str(folder))
    ids = model.tokenizer("Hello there", return_tensors="pt")["input_ids"]
    assert (other(ids) - model(ids)).abs().max().item() < 1e-5
    assert model_name(other) == str(folder)


def test_cached_load_is_fast():
    embedded_model_dir()  # make sure the cache exists
    # Times load_model() itself in a fresh process (imports of torch/transformer_lens excluded: a fixed cost of any script).
    code = (
        "import time; from probes import load_model; t=time.perf_counter(); load_model(); print(time.perf_counter()-t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout.strip().splitlines()[-1]) < 5.0, out.stdout


def test_conversion_into_fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARMLENS_CACHE", str(tmp_path))
    start = time.perf_counter()
    folder = embedded_model_dir(progress=False)
    assert folder.is_relative_to(tmp_path) and (folder / "model.safetensors").is_file()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".convert-")]  # no temp dir left
    assert time.perf_counter() - start < 120


@pytest.mark.parametrize("name", ["no-such-org/no-such-model-xyz"])
def test_unknown_model_offline_is_one_line_error(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HarmlensError, match="cannot load model") as info:
        load_model(name)
    assert "\n" not in str(info.value)


def test_local_folder_without_config_rejected(tmp_path):
    with pytest.raises(HarmlensError, match="no config.json"):
        load_model(str(tmp_path))


def test_organism_alias_resolves_newest_built_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HARMLENS_CACHE", str(tmp_path))
    with pytest.raises(HarmlensError, match="build-organism text"):
        resolve_model_path("organism")
    for i, name in enumerate(["text-v1-aaa", "text-v1-bbb"]):
        folder = tmp_path / "organisms" / name
        folder.mkdir(parents=True)
        (folder / "card.json").write_text("{}")
        os.utime(folder / "card.json", (1000 + i, 1000 + i))
    path, canonical = resolve_model_path("organism:text")
    assert Path(path).name == "text-v1-bbb" and canonical == path
    with pytest.raises(HarmlensError, match="no vlm organism"):
        resolve_model_path("organism:vlm")
