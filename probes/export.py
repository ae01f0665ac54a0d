"""Directions in and out of other tools: llama.cpp/repeng GGUF control vectors, refusal_direction's direction.pt,
and an orthogonalised model saved as a plain HF folder.

Layer mapping. A harmlens layer L is the residual stream at the *input* of block L (resid_pre; L = n_layers is the
final residual, after the last block). llama.cpp adds the control-vector tensor ``direction.N`` to the *output* of
block N (0-based; ``direction.0`` is refused by llama.cpp's loader, and repeng numbers layers the same way). The
output of block N is the input of block N+1, so harmlens L <-> llama.cpp N = L - 1, and only L >= 2 can be
exported. llama.cpp adds the vector times the strength given with ``--control-vector-scaled``; a negative strength
steers away from the direction. The mapping is checked numerically against llama.cpp itself
(examples/llamacpp_control_vector_check.py, docs/formats.md).
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from harmlens.errors import HarmlensError
from harmlens.hf import atomic_dir, unwrap_model
from harmlens.io import atomic_write, model_name

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

ARCH = "controlvector"


def harmlens_to_llamacpp(layer: int) -> int:
    """llama.cpp's direction index for a harmlens layer (L - 1); L < 2 has no llama.cpp equivalent."""
    if layer < 2:
        raise HarmlensError(
            f"harmlens layer {layer} cannot be a llama.cpp control vector: llama.cpp steers block outputs from "
            "block 1 on (direction.1 = harmlens layer 2)"
        )
    return layer - 1


def write_control_vector(
    path: str | os.PathLike,
    vectors: Mapping[int, torch.Tensor],
    *,
    d_model: int,
    n_layers: int,
    model_hint: str,
    model_name: str | None = None,
) -> Path:
    """Write {harmlens layer: [d_model] vector} as a GGUF control vector (direction.N, N = L - 1), atomically."""
    import gguf

    if not vectors:
        raise HarmlensError("no directions to export")
    tensors = {}
    for layer, vec in sorted(vectors.items()):
        if not 0 <= layer <= n_layers:
            raise HarmlensError(f"layer {layer} out of range: the model has layers 0..{n_layers}")
        vec = vec.detach().float().cpu().reshape(-1)
        if vec.numel() != d_model:
            raise HarmlensError(
                f"direction at layer {layer} has {vec.numel()} values, the model's d_model is {d_model}"
            )
        if not torch.isfinite(vec).all():
            raise HarmlensError(f"direction at layer {layer} has non-finite values")
        tensors[f"direction.{harmlens_to_llamacpp(layer)}"] = vec.numpy().astype(np.float32)

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(str(tmp), ARCH)
        writer.add_string(f"{ARCH}.model_hint", model_hint)
        writer.add_uint32(f"{ARCH}.layer_count", len(tensors))
        writer.add_uint32("harmlens.d_model", int(d_model))
        writer.add_uint32("harmlens.n_layers", int(n_layers))
        if model_name:
            writer.add_string("harmlens.model", model_name)
        for name, arr in tensors.items():
            writer.add_tensor(name, arr)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    return atomic_write(path, write)


def _field(reader, key: str):
    field = reader.fields.get(key)
    if field is None:
        return None
    value = field.parts[field.data[0]]
    if field.types and field.types[0].name == "STRING":
        return bytes(value).decode("utf-8")
    return int(value[0])


def read_control_vector(path: str | os.PathLike, model: TransformerBridge | None = None) -> dict[int, torch.Tensor]:
    """{harmlens layer: vector} from a GGUF control vector (repeng's or harmlens's); with `model`, check it fits."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise HarmlensError(f"no such control vector file: {path}")
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError, KeyError) as exc:
        raise HarmlensError(f"{path} is not a readable GGUF file: {exc}") from None
    arch = _field(reader, "general.architecture")
    if arch != ARCH:
        raise HarmlensError(f"{path} is a GGUF of architecture {arch!r}, not a control vector")
    out: dict[int, torch.Tensor] = {}
    for t in reader.tensors:
        head, _, idx = t.name.partition(".")
        if head != "direction" or not idx.isdigit() or int(idx) < 1:
            raise HarmlensError(f"{path}: unexpected tensor {t.name!r} in a control vector")
        out[int(idx) + 1] = torch.from_numpy(np.array(t.data, dtype=np.float32).reshape(-1))
    if not out:
        raise HarmlensError(f"{path}: control vector has no direction tensors")
    if model is not None:
        d, n = int(model.cfg.d_model), int(model.cfg.n_layers)
        sizes = {v.numel() for v in out.values()}
        if sizes != {d}:
            raise HarmlensError(f"{path} was made for another base model: vectors of size {sorted(sizes)}, d_model {d}")
        if max(out) > n:
            raise HarmlensError(f"{path} was made for another base model: it steers block {max(out) - 1} of {n}")
        recorded = _field(reader, "harmlens.model")
        if recorded is not None and recorded != model_name(model):
            raise HarmlensError(f"{path} was made for model {recorded!r}, not {model_name(model)!r}")
    return out


def read_direction_pt(path: str | os.PathLike, model: TransformerBridge | None = None) -> tuple[torch.Tensor, dict]:
    """refusal_direction's direction.pt (tensor only, torch.load(weights_only=True)) and its direction_metadata.json
    ({'pos', 'layer'}, harmlens's layer convention) when it lies beside it; full pickles are refused."""
    path = Path(path)
    if not path.is_file():
        raise HarmlensError(f"no such file: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError) as exc:
        first = " ".join(str(exc).split())[:160]
        raise HarmlensError(f"{path} is refused: not a plain tensor file (weights_only load failed: {first})") from None
    if not isinstance(obj, torch.Tensor) or obj.dim() != 1:
        raise HarmlensError(f"{path} must hold one [d_model] tensor, got {type(obj).__name__}")
    meta: dict = {}
    side = path.with_name("direction_metadata.json")
    if side.is_file():
        try:
            meta = {k: int(v) for k, v in json.loads(side.read_text()).items() if k in ("pos", "layer")}
        except (ValueError, TypeError, AttributeError):
            raise HarmlensError(f"{side} is not refusal_direction's direction metadata") from None
    if model is not None and obj.numel() != int(model.cfg.d_model):
        raise HarmlensError(
            f"{path} was made for another base model: {obj.numel()} values, d_model {model.cfg.d_model}"
        )
    if model is not None and "layer" in meta and not 0 <= meta["layer"] <= int(model.cfg.n_layers):
        raise HarmlensError(f"{path} was made for another base model: layer {meta['layer']} out of range")
    return obj.float(), meta


def save_edited(
    model: TransformerBridge,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    card: dict | None = None,
    ablation: torch.Tensor | None = None,
) -> Path:
    """Save a model edited in place (e.g. by orthogonalize) as a plain HF folder: safetensors, config, tokenizer.

    With `ablation` (a [d_model] direction) the folder holds the model orthogonalised against it, as
    orthogonalize(model, ablation) would leave it, while the model itself stays unedited (vLLM serves such a folder
    as the directional-ablation condition).
    """
    from harmlens.probes.interventions import direction_sha256, orthogonalized_copy

    hf = unwrap_model(model) if ablation is None else orthogonalized_copy(model, ablation)
    if ablation is not None:
        card = {"edit": "orthogonalize", "direction_sha256": direction_sha256(model, ablation), **(card or {})}
    tok = getattr(model, "tokenizer", None)
    with atomic_dir(path, overwrite=overwrite, what="edited model") as tmp:
        hf.save_pretrained(tmp, safe_serialization=True)
        if tok is not None:
            tok.save_pretrained(tmp)
        if card:
            (tmp / "harmlens_edit.json").write_text(json.dumps(card, indent=1), encoding="utf-8")
    return Path(path)


def layers_arg(layers: Iterable[int] | int | None, default: list[int]) -> list[int]:
    """A layer list from None (default), an int or an iterable of ints."""
    if layers is None:
        return default
    return [layers] if isinstance(layers, int) else [int(x) for x in layers]


def _target(meta: dict, model) -> tuple[int, int, str]:
    """(d_model, n_layers, model name) of the export target: the model when given (checked), else the metadata."""
    d, n, name = int(meta["d_model"]), int(meta["n_layers"]), str(meta.get("model", "unknown"))
    if model is not None:
        have = int(model.cfg.d_model), int(model.cfg.n_layers)
        if have != (d, n):
            raise HarmlensError(
                f"directions have d_model {d} and {n} layers, the model {model_name(model)!r} has d_model "
                f"{have[0]} and {have[1]} layers"
            )
        name = model_name(model)
    return d, n, name


def directions_to_control_vector(
    directions,
    path,
    *,
    kind="refusal",
    layers=None,
    scale=1.0,
    unit=True,
    model: TransformerBridge | None = None,
    model_hint=None,
) -> Path:
    """Directions -> GGUF control vector: each layer's (unit, scaled) direction at llama.cpp's direction.{L-1}."""
    d, n, name = _target(directions.metadata, model)
    chosen = layers_arg(layers, [x for x in directions.layers if x >= 2])
    vecs = {
        x: (directions.unit(x, kind) if unit else directions.direction(kind)[directions.row(x)]) * scale for x in chosen
    }
    return write_control_vector(path, vecs, d_model=d, n_layers=n, model_hint=model_hint or name, model_name=name)


def selection_to_control_vector(
    selection, path, *, layers=None, scale=1.0, unit=True, model: TransformerBridge | None = None, model_hint=None
):
    """A selected refusal direction -> GGUF control vector at its layer (or at each of `layers`)."""
    d, n, name = _target(selection.metadata, model)
    vec = (selection.unit() if unit else selection.direction) * scale
    vecs = {x: vec for x in layers_arg(layers, [selection.layer])}
    return write_control_vector(path, vecs, d_model=d, n_layers=n, model_hint=model_hint or name, model_name=name)
