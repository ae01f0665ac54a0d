"""Argument checks at the boundary, before any compute: counts, numbers, devices, dtypes, text and output paths."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from harmlens.errors import HarmlensError

MAX_LAYER = 10_000  # no model has more layers; a larger index is a typo, refused before anything is allocated
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def count(value, name: str, *, minimum: int = 1) -> int:
    """An integer ≥ minimum (a count, a batch size, a step number); bools and floats are refused."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
                value = int(value)
            else:
                raise ValueError
        except ValueError:
            raise HarmlensError(f"{name} must be an integer, got {value!r}") from None
    if value < minimum:
        raise HarmlensError(f"{name} must be at least {minimum}, got {value}")
    return value


def finite(
    value, name: str, *, minimum: float | None = None, maximum: float | None = None, open_min: bool = False
) -> float:
    """A finite float within [minimum, maximum] (or (minimum, ...] with open_min)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise HarmlensError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise HarmlensError(f"{name} must be finite, got {x}")
    if minimum is not None and (x <= minimum if open_min else x < minimum):
        raise HarmlensError(f"{name} must be {'>' if open_min else '>='} {minimum:g}, got {x:g}")
    if maximum is not None and x > maximum:
        raise HarmlensError(f"{name} must be <= {maximum:g}, got {x:g}")
    return x


def layer_index(layer, name: str = "layer", n_layers: int | None = None) -> int:
    """A layer index in [0, n_layers] (n_layers = the final residual) or [0, MAX_LAYER] without a model."""
    top = n_layers if n_layers is not None else MAX_LAYER
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= top:
        raise HarmlensError(f"{name} {layer!r} is out of range 0..{top}")
    return layer


def device(value) -> torch.device | None:
    """A torch device that exists here (None stays None; an int is that CUDA index): 'tpu:7', 'cuda' without a GPU,
    'meta' and typos are refused with one line."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise HarmlensError(f"device must be a string, int or torch.device, got {value!r}")
    try:
        dev = torch.device("cuda", value) if isinstance(value, int) else torch.device(value)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise HarmlensError(f"unknown device {value!r}: use cpu, cuda, cuda:N or mps ({_first(exc)})") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "meta":
        raise HarmlensError("device 'meta' holds no weights: choose cpu or an accelerator")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise HarmlensError(f"device {str(dev)!r} does not exist: no CUDA device here (CUDA is not available)")
        if (dev.index or 0) >= count:
            raise HarmlensError(f"device {str(dev)!r} does not exist: this machine has {count} CUDA device(s)")
        return dev
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise HarmlensError("device 'mps' does not exist: MPS is not available on this machine")
    try:
        torch.empty(0, device=dev)
    except Exception as exc:  # noqa: BLE001 - any backend failure means the device is unusable
        raise HarmlensError(f"device {str(dev)!r} is not available: {_first(exc)}") from None
    return dev


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def dtype(value) -> torch.dtype | None:
    """A floating torch dtype from a dtype or its name ('bfloat16'); None stays None."""
    if value is None or value in DTYPES.values():
        return value
    if isinstance(value, str) and value.removeprefix("torch.") in DTYPES:
        return DTYPES[value.removeprefix("torch.")]
    raise HarmlensError(f"unsupported dtype {value!r}: use {', '.join(DTYPES)}")


def cpu_has_bf16() -> bool:
    """True on CPUs with native bfloat16 arithmetic (AVX512-BF16 or AMX), where bfloat16 runs faster than float32."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def default_dtype(device: torch.device | str) -> torch.dtype:
    """The dtype a model loads in when none is given: $HARMLENS_DTYPE if set; bfloat16 on CUDA and on CPUs with
    native bfloat16 (measured within tolerance on the organism: benchmarks/cpu_dtype.py); float32 otherwise."""
    env = os.environ.get("HARMLENS_DTYPE", "").strip()
    if env:
        chosen = dtype(env)
        assert chosen is not None
        return chosen
    kind = torch.device(device).type
    return torch.bfloat16 if kind == "cuda" or (kind == "cpu" and cpu_has_bf16()) else torch.float32


def text(value: str, name: str) -> str:
    """User text without NUL characters (a NUL is refused, never silently replaced)."""
    if not isinstance(value, str):
        raise HarmlensError(f"{name} must be a string, got {type(value).__name__}")
    if "\0" in value:
        raise HarmlensError(f"{name} contains a NUL character (\\0)")
    return value


def _writable_parent(path: Path, what: str) -> None:
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise HarmlensError(f"cannot write {what} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise HarmlensError(f"cannot write {what} {path}: {parent} is not writable")


def out_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """An output folder that exists as a writable folder or can be created (checked before any compute)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise HarmlensError(f"{what} {path} exists and is not a folder")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise HarmlensError(f"{what} {path} is not writable")
        return path
    _writable_parent(path, what)
    return path


def out_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """An output file path that is not a folder and whose folder exists writable or can be created."""
    path = Path(path)
    if path.is_dir():
        raise HarmlensError(f"{what} {path} is a folder; give a file name")
    if path.exists() and not os.access(path.parent, os.W_OK | os.X_OK):
        raise HarmlensError(f"cannot write {what} {path}: {path.parent} is not writable")
    _writable_parent(path, what)
    return path
