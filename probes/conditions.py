"""Generation conditions built from directions: the directional-ablation condition on the hf and vllm engines."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from harmlens.probes.interventions import ablate, direction_sha256, unit_direction
from harmlens.runtime import Backend, get_backend, model_engines

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def ablated_folder(model: TransformerBridge, direction: torch.Tensor) -> str:
    """A temporary HF folder holding the model orthogonalised against the direction (the model is not edited),
    removed when the process exits."""
    from harmlens.probes.export import save_edited

    tmp = tempfile.mkdtemp(prefix="harmlens-vllm-ablated-")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    return str(save_edited(model, Path(tmp) / "model", ablation=direction))


def condition_backend(
    model: TransformerBridge,
    backend: str | Backend = "hf",
    *,
    processor=None,
    ablation: torch.Tensor | None = None,
    **engine_kwargs,
) -> Backend:
    """A backend serving the model, or with `ablation` (a [d_model] direction) its directional-ablation condition:
    'hf' generates under ablate(model, direction); 'vllm' serves the weights orthogonalised against it (one engine
    per direction, its folder saved once)."""
    if ablation is None:
        return get_backend(model, backend, processor=processor, **engine_kwargs)
    unit_direction(model, ablation)  # a bad direction fails here, before any generation
    if backend == "vllm":
        key = direction_sha256(model, ablation)
        engine = model_engines(model).get(key)
        if engine is not None and not engine_kwargs:
            return engine
        return get_backend(model, "vllm", weights=ablated_folder(model, ablation), key=key, **engine_kwargs)
    return get_backend(model, backend, processor=processor, hooks=lambda: ablate(model, ablation), **engine_kwargs)
