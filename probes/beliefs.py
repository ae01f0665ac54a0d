"""Belief scores: centroid-cosine margins at t_inst (harmful vs harmless) and t_post-inst (refuse vs accept)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from harmlens.errors import HarmlensError
from harmlens.io import check_compatible, load_tensors, model_signature, save_tensors
from harmlens.probes.directions import Directions, layer_span, render_prompts
from harmlens.probes.means import has_float64, mean_activations
from harmlens.runtime import (
    ChatPrompt,
    NoSystem,
    chat_format,
    iter_resid_batches,
    model_device,
    system_from_metadata,
    system_metadata,
)

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

FORMAT = "harmlens.centroids"
_NAMES = ("harmful", "harmless", "refuse", "accept")
_SAME = object()  # sentinel: render with the centroids' own system prompt


@dataclass(repr=False)
class Centroids:
    """Per-layer class centroids [n_layers_sel, d_model]: harmful/harmless at t_inst, refuse/accept at t_post-inst."""

    harmful: torch.Tensor
    harmless: torch.Tensor
    refuse: torch.Tensor
    accept: torch.Tensor
    metadata: dict = field(default_factory=dict)  # model, d_model, n_layers, layers, system

    @property
    def layers(self) -> list[int]:
        """Absolute layer indices of the rows."""
        return list(self.metadata["layers"])

    def __repr__(self) -> str:
        return f"Centroids(model={self.metadata.get('model')!r}, layers={layer_span(self.layers)})"

    @classmethod
    def from_directions(cls, directions: Directions) -> Centroids:
        """Reuse the class means stored by extract_directions (harmful = refuse side, harmless = accept side)."""
        d = directions
        meta = {k: d.metadata[k] for k in ("model", "d_model", "n_layers", "layers", "system")}
        meta.update(system_metadata(system_from_metadata(d.metadata)))
        meta.update(format=FORMAT, source="directions", data_sha256=d.metadata.get("data_sha256"))
        return cls(
            d.harmful_inst.clone(),
            d.harmless_inst.clone(),
            d.harmful_post.clone(),
            d.harmless_post.clone(),
            metadata=meta,
        )

    @classmethod
    def from_activations(
        cls,
        harmful_inst,
        harmless_inst,
        refuse_post,
        accept_post,
        *,
        model: TransformerBridge,
        layers: Sequence[int],
        system: str | NoSystem | None = None,
    ) -> Centroids:
        """Means (float64-accumulated) of activations [n, n_layers_sel, d] or iterables of such batches."""
        means = [
            mean_activations([a] if isinstance(a, torch.Tensor) else a).float()
            for a in (harmful_inst, harmless_inst, refuse_post, accept_post)
        ]
        want = (len(layers), int(model.cfg.d_model))
        for name, m in zip(_NAMES, means):
            if tuple(m.shape) != want:
                raise HarmlensError(f"{name} activations give centroids of shape {tuple(m.shape)}, expected {want}")
        meta = {
            "format": FORMAT,
            **model_signature(model),
            "layers": [int(x) for x in layers],
            **system_metadata(system),
            "source": "activations",
        }
        harmful, harmless, refuse, accept = means
        return cls(harmful, harmless, refuse, accept, metadata=meta)

    def rows(self, layers: Sequence[int] | None) -> tuple[list[int], list[int]]:
        """(row indices, absolute layers) for a layer subset (None = all centroid layers)."""
        if layers is None:
            return list(range(len(self.layers))), self.layers
        layers = [int(x) for x in layers]
        if not layers:
            raise HarmlensError("empty layer list")
        missing = [x for x in layers if x not in self.layers]
        if missing:
            raise HarmlensError(f"no centroids for layer(s) {missing} (available: {layer_span(self.layers)})")
        return [self.layers.index(x) for x in layers], layers

    def save(self, path: str | os.PathLike) -> Path:
        """Write a safetensors file (tensors + JSON metadata) atomically."""
        return save_tensors(path, {k: getattr(self, k).float() for k in _NAMES}, self.metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, model: TransformerBridge | None = None) -> Centroids:
        """Read a file written by save(); with `model`, check it matches."""
        tensors, meta = load_tensors(path)
        if meta.get("format") != FORMAT or any(k not in tensors for k in _NAMES):
            raise HarmlensError(f"{path} is not a harmlens centroids file")
        want = (len(meta.get("layers", [])), meta.get("d_model"))
        if any(tuple(tensors[k].shape) != want for k in _NAMES):
            raise HarmlensError(f"{path}: centroid shapes do not match its metadata {want}")
        if model is not None:
            check_compatible(meta, model)
        harmful, harmless, refuse, accept = (tensors[k] for k in _NAMES)
        return cls(harmful, harmless, refuse, accept, metadata=meta)


@dataclass(repr=False)
class BeliefScores:
    """Δharmful (t_inst) and Δrefuse (t_post-inst) per prompt, averaged over layers, plus per-layer values."""

    delta_harmful: torch.Tensor  # [n_prompts]
    delta_refuse: torch.Tensor  # [n_prompts]
    per_layer_harmful: torch.Tensor  # [n_prompts, n_layers_sel]
    per_layer_refuse: torch.Tensor  # [n_prompts, n_layers_sel]
    layers: list[int]
    instructions: list[str]

    def __len__(self) -> int:
        return len(self.instructions)

    def __repr__(self) -> str:
        return f"BeliefScores(n_prompts={len(self)}, layers={layer_span(self.layers)})"

    def to_rows(self) -> list[dict]:
        """One dict per prompt: {instruction, delta_harmful, delta_refuse}."""
        return [
            {"instruction": s, "delta_harmful": h, "delta_refuse": r}
            for s, h, r in zip(self.instructions, self.delta_harmful.tolist(), self.delta_refuse.tolist())
        ]


def delta_scores(
    acts: torch.Tensor, pos_centroid: torch.Tensor, neg_centroid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos(h_l, pos_l) - cos(h_l, neg_l) for acts [n, layers, d]: (mean over layers [n], per layer [n, layers]), on
    the activations' device, in float64 where it has it."""
    if acts.ndim != 3:
        raise HarmlensError(f"acts must be [n, layers, d_model], got shape {tuple(acts.shape)}")
    for name, c in (("pos_centroid", pos_centroid), ("neg_centroid", neg_centroid)):
        if tuple(c.shape) != tuple(acts.shape[1:]):
            raise HarmlensError(f"{name} has shape {tuple(c.shape)}, expected {tuple(acts.shape[1:])}")
    h = acts.detach().to(torch.float64 if has_float64(acts.device) else torch.float32)
    cos = torch.nn.functional.cosine_similarity
    per_layer = cos(h, pos_centroid.to(h)[None], dim=-1) - cos(h, neg_centroid.to(h)[None], dim=-1)
    return per_layer.mean(dim=-1).float(), per_layer.float()


def belief_scores(
    model: TransformerBridge,
    prompts: list[str],
    centroids: Centroids,
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    system=_SAME,
    padding_side: str = "right",
    progress: bool = False,
) -> BeliefScores:
    """Δharmful and Δrefuse of each prompt, one forward pass per batch reading t_inst and t_post-inst together."""
    check_compatible(centroids.metadata, model)
    rows, layers = centroids.rows(layers)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise HarmlensError(f"batch_size must be a positive integer, got {batch_size!r}")
    fmt = chat_format(model, system=system_from_metadata(centroids.metadata) if system is _SAME else system)
    rendered = render_prompts(fmt, prompts)

    def select(p: ChatPrompt) -> tuple[int, int]:
        return (p.t_inst, p.t_post_inst)

    device = model_device(model)  # where iter_resid_batches leaves the activations: the centroids go there once
    c = {k: getattr(centroids, k)[rows].to(device) for k in _NAMES}
    per_batch = []
    for _, acts in iter_resid_batches(
        model,
        rendered,
        select,
        layers=layers,
        batch_size=batch_size,
        padding_side=padding_side,
        progress="belief scores" if progress else False,
    ):  # acts [b, n_sel, 2, d] on the model's device: score there, copy only the scores
        dh, ph = delta_scores(acts[:, :, 0], c["harmful"], c["harmless"])
        dr, pr = delta_scores(acts[:, :, 1], c["refuse"], c["accept"])
        per_batch.append([t.cpu() for t in (dh, dr, ph, pr)])
    dh, dr, ph, pr = (torch.cat(parts) for parts in zip(*per_batch))
    return BeliefScores(dh, dr, ph, pr, layers, [p.instruction for p in rendered])
