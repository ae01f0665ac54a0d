"""Device, device_map and quantization checks: bad placements fail with one line before any weights load."""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from harmlens import validate
from harmlens.errors import HarmlensError

DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_OFFLOAD_TARGETS = ("disk",)
# TransformerLens 4.3 refuses a realized device_map that puts some modules on a GPU and others on cpu/disk (its
# multi_gpu.MIXED_OFFLOAD_GPU_ERROR: "likely fine" but unverified, and no switch turns the check off), after the
# weights have loaded; harmlens refuses such an explicit map before loading anything.
MIXED_MAP_HINT = (
    "TransformerLens 4.3 cannot run a model split between a GPU and cpu/disk offload: map every module to GPUs "
    "(device_map='auto' with enough GPU memory, or max_memory without a 'cpu' entry) or load it on the CPU"
)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


check_device = validate.device  # one device check for the library (harmlens.validate.device)


def check_device_map(device_map: Any) -> Any:
    """Validate a HF device_map (a strategy name, one device, or {module: device}) without loading anything."""
    if isinstance(device_map, str) and device_map in DEVICE_MAP_STRATEGIES:
        return device_map
    if isinstance(device_map, (str, int, torch.device)):
        try:
            check_device(device_map)
        except HarmlensError as exc:
            raise HarmlensError(
                f"device_map {device_map!r} is neither a strategy ({', '.join(DEVICE_MAP_STRATEGIES)}) "
                f"nor a usable device: {exc}"
            ) from None
        return device_map
    if not isinstance(device_map, dict) or not device_map:
        raise HarmlensError(
            f"device_map must be one of {', '.join(DEVICE_MAP_STRATEGIES)}, a device, or a non-empty "
            f"{{module: device}} dict, got {device_map!r}"
        )
    for module, target in device_map.items():
        if isinstance(target, str) and target in _OFFLOAD_TARGETS:
            continue
        try:
            check_device(target)
        except HarmlensError as exc:
            raise HarmlensError(f"device_map[{module!r}]: {exc}") from None
    mixed = gpu_offload_mix(device_map)
    if mixed is not None:
        (gpu_module, gpu), (offload_module, offload) = mixed
        raise HarmlensError(
            f"device_map puts {gpu_module!r} on {gpu!r} and {offload_module!r} on {offload!r}: {MIXED_MAP_HINT}"
        )
    return device_map


def _target_kind(target: Any) -> str:
    """'gpu', 'offload' (cpu or disk) or 'other' for one device_map value, as TransformerLens 4.3 tells them apart."""
    if isinstance(target, bool):
        return "other"
    if isinstance(target, int):
        return "gpu"  # accelerate reads an int as that CUDA index
    kind = target.type if isinstance(target, torch.device) else str(target).split(":")[0].strip().lower()
    return "gpu" if kind == "cuda" else "offload" if kind in ("cpu", "disk") else "other"


def gpu_offload_mix(device_map: Any) -> tuple[tuple[str, Any], tuple[str, Any]] | None:
    """The first ((module, gpu target), (module, cpu/disk target)) pair of a {module: device} map that mixes the two
    (the split TransformerLens 4.3 refuses), else None."""
    if not isinstance(device_map, dict):
        return None
    first: dict[str, tuple[str, Any]] = {}
    for module, target in device_map.items():
        first.setdefault(_target_kind(target), (str(module), target))
    if "gpu" in first and "offload" in first:
        return first["gpu"], first["offload"]
    return None


def check_quantization_config(config: Any) -> Any:
    """Fail early when a bitsandbytes config is given but bitsandbytes is not installed."""
    if config is None:
        return None
    method = getattr(config, "quant_method", None)
    if isinstance(config, dict):
        method = config.get("quant_method", "bitsandbytes" if any("load_in" in k for k in config) else None)
    method = getattr(method, "value", method)
    if str(method).startswith("bitsandbytes") and importlib.util.find_spec("bitsandbytes") is None:
        raise HarmlensError(
            "quantization_config needs bitsandbytes, which is not installed: run `pip install bitsandbytes`"
        )
    return config


def is_dispatched(hf: Any) -> bool:
    """True when accelerate placed the model (hf_device_map): it must never be moved with .to()."""
    return bool(getattr(hf, "hf_device_map", None))


def is_quantized(hf: Any) -> bool:
    """True for a model loaded through a HF quantizer or holding non-floating-point weights."""
    if getattr(hf, "is_quantized", False) or getattr(hf, "hf_quantizer", None) is not None:
        return True
    return any(not p.is_floating_point() for p in hf.parameters())


def input_device(model: Any) -> torch.device:
    """Device token ids go to: the input embedding's (under a device_map split, not the first parameter's)."""
    hf = getattr(model, "original_model", model)
    try:
        return hf.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        return next(model.parameters()).device


class PerDevice:
    """A tensor copied once to each device (and dtype) it is asked for: hooks index activations wherever they live."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
        self._cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {(tensor.device, tensor.dtype): tensor}

    def on(self, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The tensor on `device` (cast to `dtype` when given)."""
        key = (device, dtype or self.tensor.dtype)
        if key not in self._cache:
            self._cache[key] = self.tensor.to(device=device, dtype=key[1])
        return self._cache[key]

    def like(self, x: torch.Tensor) -> torch.Tensor:
        """The tensor on x's device and in x's dtype."""
        return self.on(x.device, x.dtype)
