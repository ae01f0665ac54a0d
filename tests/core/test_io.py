"""harmlens.io: atomic writes, safetensors round trips, one-line load errors, model compatibility checks."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from harmlens.errors import HarmlensError
from harmlens.io import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    check_compatible,
    load_tensors,
    model_signature,
    save_tensors,
)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg
    return msg


def test_atomic_text_and_bytes(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "héllo")
    assert target.read_text(encoding="utf-8") == "héllo"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert os.listdir(target.parent) == ["a.txt"]
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode


def test_atomic_write_failure_keeps_old_file_and_no_temp(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")

    def half_write(tmp):
        tmp.write_bytes(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_write)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["a.bin"]


def test_save_load_round_trip(tmp_path):
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5), "c": torch.randn(2, 2, dtype=torch.float64).T}
    meta = {"model": "m", "layers": [0, 1], "nested": {"x": None, "y": 1.5}, "text": "é"}
    path = save_tensors(tmp_path / "t.safetensors", tensors, meta)
    got, got_meta = load_tensors(path)
    assert got_meta == meta
    assert set(got) == set(tensors)
    for key, value in tensors.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value)


def test_save_rejects_unserialisable_metadata_and_writes_nothing(tmp_path):
    with pytest.raises(HarmlensError) as exc:
        save_tensors(tmp_path / "t.safetensors", {"a": torch.zeros(1)}, {"bad": object()})
    assert "JSON" in _one_line(exc)
    assert os.listdir(tmp_path) == []


def test_load_missing_file(tmp_path):
    with pytest.raises(HarmlensError) as exc:
        load_tensors(tmp_path / "nope.safetensors")
    assert "no such file" in _one_line(exc)


@pytest.mark.parametrize("keep", [0, 5, 0.5, -1])
def test_load_truncated_file(tmp_path, keep):
    path = save_tensors(tmp_path / "t.safetensors", {"a": torch.randn(64, 64)}, {"k": 1})
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (len(data) + keep if keep < 0 else keep)
    path.write_bytes(data[:n])
    with pytest.raises(HarmlensError) as exc:
        load_tensors(path)
    assert "truncated" in _one_line(exc)


def test_load_non_safetensors(tmp_path):
    text = tmp_path / "x.safetensors"
    text.write_text("this is not a safetensors file at all " * 20)
    with pytest.raises(HarmlensError) as exc:
        load_tensors(text)
    _one_line(exc)
    pickled = tmp_path / "x.pt"
    torch.save({"a": torch.zeros(3)}, pickled)
    with pytest.raises(HarmlensError):
        load_tensors(pickled)
    with pytest.raises(HarmlensError, match="not a file"):
        load_tensors(tmp_path)


def test_load_foreign_safetensors_without_metadata(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"a": torch.zeros(2)}, str(path))
    with pytest.raises(HarmlensError) as exc:
        load_tensors(path)
    assert "not a harmlens artefact" in _one_line(exc)


def test_check_compatible(tiny_model):
    meta = model_signature(tiny_model)
    assert meta == {"model": "harmlens-test/tiny-random-llama", "d_model": 64, "n_layers": 2}
    check_compatible(dict(meta, extra="ignored"), tiny_model)
    for key, bad in (("model", "other/model"), ("d_model", 576), ("n_layers", 30)):
        with pytest.raises(HarmlensError) as exc:
            check_compatible(dict(meta, **{key: bad}), tiny_model)
        assert key in _one_line(exc)
    with pytest.raises(HarmlensError):
        check_compatible({}, tiny_model)
