"""Harmfulness (t_inst) and refusal (t_post-inst) directions: per-layer class-mean differences, Arditi candidates."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from harmlens.errors import HarmlensError
from harmlens.io import check_compatible, load_tensors, model_signature, save_tensors
from harmlens.probes.means import mean_activations
from harmlens.runtime import ChatPrompt, NoSystem, chat_format, check_layers, iter_resid_batches, system_metadata

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

FORMAT = "harmlens.directions"
VERSION = 1
KINDS = ("harmfulness", "refusal")
CENTROIDS = ("harmful_inst", "harmless_inst", "harmful_post", "harmless_post")
_TENSORS = ("harmfulness", "refusal", "candidates", *CENTROIDS)


@dataclass(repr=False)
class Directions:
    """Un-normalised per-layer directions and class centroids; rows follow metadata['layers'] (absolute indices)."""

    harmfulness: torch.Tensor  # [n_layers_sel, d_model], harmful - harmless mean at t_inst
    refusal: torch.Tensor  # [n_layers_sel, d_model], harmful - harmless mean at t_post-inst
    candidates: torch.Tensor  # [n_post, n_layers_sel, d_model], at offsets metadata['positions']
    harmful_inst: torch.Tensor  # class centroids [n_layers_sel, d_model]
    harmless_inst: torch.Tensor
    harmful_post: torch.Tensor
    harmless_post: torch.Tensor
    metadata: dict = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        """Absolute layer indices of the rows (L = the final residual)."""
        return list(self.metadata["layers"])

    @property
    def positions(self) -> list[int]:
        """Negative offsets from the prompt end of the candidate rows (-n_post..-1)."""
        return list(self.metadata["positions"])

    def __repr__(self) -> str:
        m = self.metadata
        return (
            f"Directions(model={m.get('model')!r}, layers={len(self.layers)} of {m.get('n_layers', 0) + 1}, "
            f"n_post={len(self.positions)}, n_harmful={m.get('n_harmful')}, n_harmless={m.get('n_harmless')})"
        )

    def row(self, layer: int) -> int:
        """Row index of an absolute layer index; HarmlensError if out of range or not extracted."""
        n = int(self.metadata["n_layers"])
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= n:
            raise HarmlensError(f"layer {layer!r} out of range: the model has layers 0..{n} ({n} = final residual)")
        if layer not in self.layers:
            raise HarmlensError(f"layer {layer} was not extracted (extracted: {layer_span(self.layers)})")
        return self.layers.index(layer)

    def direction(self, kind: str) -> torch.Tensor:
        """All rows of one kind: 'harmfulness' or 'refusal'."""
        if kind not in KINDS:
            raise HarmlensError(f"kind must be 'harmfulness' or 'refusal', got {kind!r}")
        return getattr(self, kind)

    def unit(self, layer: int, kind: str = "refusal") -> torch.Tensor:
        """Unit-norm direction of `kind` at an absolute layer index."""
        vec = self.direction(kind)[self.row(layer)]
        norm = vec.norm()
        if not norm > 0:
            raise HarmlensError(f"the {kind} direction at layer {layer} is zero: cannot normalise it")
        return vec / norm

    def norms(self, kind: str = "refusal") -> torch.Tensor:
        """L2 norm of each row of `kind`: [n_layers_sel]."""
        return self.direction(kind).double().norm(dim=-1).float()

    def cosine_per_layer(self) -> torch.Tensor:
        """Cosine between the harmfulness and refusal directions per extracted layer: [n_layers_sel]."""
        return torch.nn.functional.cosine_similarity(self.harmfulness.double(), self.refusal.double(), dim=-1).float()

    def to_control_vector(self, path: str | os.PathLike, **kwargs) -> Path:
        """llama.cpp/repeng GGUF control vector (harmlens layer L -> direction.{L-1}); see harmlens.probes.export."""
        from harmlens.probes.export import directions_to_control_vector

        return directions_to_control_vector(self, path, **kwargs)

    def cosine(self, layer: int | None = None) -> torch.Tensor | float:
        """Cosine between the harmfulness and refusal directions: per layer [n_layers_sel], or a float for one layer."""
        cos = torch.nn.functional.cosine_similarity(self.harmfulness.double(), self.refusal.double(), dim=-1)
        return cos.float() if layer is None else float(cos[self.row(layer)])

    def cosine_table(self) -> list[dict]:
        """One dict per extracted layer: {layer, cosine, norm_harmfulness, norm_refusal}."""
        cos, nh, nr = (
            self.cosine_per_layer().tolist(),
            self.norms("harmfulness").tolist(),
            self.norms("refusal").tolist(),
        )
        return [
            {"layer": layer, "cosine": c, "norm_harmfulness": a, "norm_refusal": b}
            for layer, c, a, b in zip(self.layers, cos, nh, nr)
        ]

    def save(self, path: str | os.PathLike) -> Path:
        """Write a safetensors file (tensors + JSON metadata) atomically."""
        return save_tensors(path, {k: getattr(self, k).float() for k in _TENSORS}, self.metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, model: TransformerBridge | None = None) -> Directions:
        """Read a file written by save(); with `model`, check it was extracted from that model."""
        tensors, meta = load_tensors(path)
        if meta.get("format") != FORMAT:
            raise HarmlensError(f"{path} is not a harmlens directions file (format {meta.get('format')!r})")
        missing = [k for k in _TENSORS if k not in tensors]
        if missing:
            raise HarmlensError(f"{path} lacks tensors: {', '.join(missing)}")
        n_sel, d = len(meta.get("layers", [])), meta.get("d_model")
        n_post = len(meta.get("positions", []))
        for key in _TENSORS:
            want = (n_post, n_sel, d) if key == "candidates" else (n_sel, d)
            if tuple(tensors[key].shape) != want:
                raise HarmlensError(f"{path}: tensor {key} has shape {tuple(tensors[key].shape)}, metadata says {want}")
        if model is not None:
            check_compatible(meta, model)
        return cls(**{k: tensors[k] for k in _TENSORS}, metadata=meta)


def extract_directions(
    model: TransformerBridge,
    harmful: list[str],
    harmless: list[str],
    *,
    batch_size: int = 16,
    layers: Sequence[int] | None = None,
    system: str | NoSystem | None = None,
    padding_side: str = "right",
    progress: bool = True,
) -> Directions:
    """Class-mean differences (harmful - harmless) of the residual stream at t_inst, t_post-inst and every eoi token."""
    layers = check_layers(model, layers)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise HarmlensError(f"batch_size must be a positive integer, got {batch_size!r}")
    fmt = chat_format(model, system=system)
    rendered = {name: render_prompts(fmt, ps, name) for name, ps in (("harmful", harmful), ("harmless", harmless))}
    n_post = min(len(p.post_inst) for ps in rendered.values() for p in ps)

    def select(p: ChatPrompt) -> tuple[int, ...]:
        return (p.t_inst, *p.post_inst[-n_post:])

    means = {}
    for name, prompts in rendered.items():
        batches = iter_resid_batches(
            model,
            prompts,
            select,
            layers=layers,
            batch_size=batch_size,
            padding_side=padding_side,
            progress=f"{name} prompts" if progress else False,
        )
        # Summed on the model's device; only the mean [n_sel, 1 + n_post, d] (float64) comes to the CPU.
        means[name] = mean_activations(acts for _, acts in batches)
    diff = means["harmful"] - means["harmless"]
    meta = {
        "format": FORMAT,
        "version": VERSION,
        **model_signature(model),
        "layers": layers,
        "positions": list(range(-n_post, 0)),
        "n_harmful": len(harmful),
        "n_harmless": len(harmless),
        "data_sha256": data_hash(harmful, harmless),
        **system_metadata(system),
        "padding_side": padding_side,
    }
    return Directions(
        harmfulness=diff[:, 0].float(),
        refusal=diff[:, -1].float(),
        candidates=diff[:, 1:].transpose(0, 1).float(),
        harmful_inst=means["harmful"][:, 0].float(),
        harmless_inst=means["harmless"][:, 0].float(),
        harmful_post=means["harmful"][:, -1].float(),
        harmless_post=means["harmless"][:, -1].float(),
        metadata=meta,
    )


def data_hash(harmful: Sequence[str], harmless: Sequence[str]) -> str:
    """sha256 of the two prompt lists (JSON-encoded), recorded to identify the extraction data."""
    blob = json.dumps({"harmful": list(harmful), "harmless": list(harmless)}, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def render_prompts(fmt, prompts, name: str = "") -> list[ChatPrompt]:
    """Render a non-empty list of instructions; errors name the list and the prompt's index."""
    label = f"{name} prompt" if name else "prompt"
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise HarmlensError(f"{label}s must be a list of strings, got {type(prompts).__name__}")
    if not prompts:
        raise HarmlensError(f"empty {label} list")
    out = []
    for i, text in enumerate(prompts):
        try:
            out.append(fmt.render(text))
        except HarmlensError as exc:
            raise HarmlensError(f"{label} {i}: {exc}") from None
    return out


def layer_span(layers: list[int]) -> str:
    """Compact text for a layer list: '0..30' when contiguous."""
    if layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 2:
        return f"{layers[0]}..{layers[-1]}"
    return ", ".join(map(str, layers))
