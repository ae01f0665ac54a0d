"""The loader's default dtype: bfloat16 on CUDA and on CPUs with native bfloat16, float32 elsewhere, $HARMLENS_DTYPE
first; training paths stay float32 whatever the default."""

import pytest
import torch

from harmlens import validate
from harmlens.errors import HarmlensError


def test_default_follows_the_cpu_and_the_environment(monkeypatch):
    monkeypatch.delenv("HARMLENS_DTYPE", raising=False)
    want = torch.bfloat16 if validate.cpu_has_bf16() else torch.float32
    assert validate.default_dtype("cpu") == want
    assert validate.default_dtype(torch.device("cuda")) == torch.bfloat16  # no GPU needed to decide
    monkeypatch.setattr(validate, "cpu_has_bf16", lambda: False)
    assert validate.default_dtype("cpu") == torch.float32
    monkeypatch.setenv("HARMLENS_DTYPE", "bfloat16")
    assert validate.default_dtype("cpu") == torch.bfloat16
    monkeypatch.setenv("HARMLENS_DTYPE", "float8")
    with pytest.raises(HarmlensError, match="unsupported dtype 'float8'"):
        validate.default_dtype("cpu")


def test_loader_uses_the_default_and_an_explicit_dtype_wins(monkeypatch):
    from harmlens.runtime.loading import load_model

    monkeypatch.setenv("HARMLENS_DTYPE", "bfloat16")
    model = load_model(device="cpu")
    assert next(model.original_model.parameters()).dtype == torch.bfloat16
    model = load_model(device="cpu", dtype="float32")
    assert next(model.original_model.parameters()).dtype == torch.float32
