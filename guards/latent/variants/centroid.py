"""The centroid variant, Zhao et al.'s Latent Guard rule: at t_inst, the per-layer cosine margin between the harmful
and the harmless class centroids, averaged over a layer window."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from harmlens.errors import HarmlensError
from harmlens.guards.latent.config_base import GuardConfig
from harmlens.guards.latent.scorer import Scorer
from harmlens.guards.latent.span_scoring import Scores


@dataclass(frozen=True)
class CentroidConfig(GuardConfig):
    """Zhao et al.'s rule at t_inst: per-layer Δ to the harmful/harmless centroids, averaged over a layer window."""

    variant: ClassVar[str] = "centroid"
    method: ClassVar[str] = "centroid"
    position: ClassVar[str] = "t_inst"


def centroid_margins(acts: torch.Tensor, harmful: torch.Tensor, harmless: torch.Tensor) -> Scores:
    """cos(h_l, harmful_l) − cos(h_l, harmless_l) of activations [n, layers, d] in float64: (mean over layers [n],
    per layer [n, layers]); harmlens.probes.beliefs.delta_scores, without importing the probes package."""
    if acts.ndim != 3:
        raise HarmlensError(f"acts must be [n, layers, d_model], got shape {tuple(acts.shape)}")
    for name, c in (("harmful", harmful), ("harmless", harmless)):
        if tuple(c.shape) != tuple(acts.shape[1:]):
            raise HarmlensError(f"{name} centroid has shape {tuple(c.shape)}, expected {tuple(acts.shape[1:])}")
    h = acts.detach().double()
    cos = torch.nn.functional.cosine_similarity
    per_layer = cos(h, harmful.to(h)[None], dim=-1) - cos(h, harmless.to(h)[None], dim=-1)
    return per_layer.mean(dim=-1).float(), per_layer.float()


class CentroidScorer(Scorer):
    """Harmfulness read at t_inst as the margin to the class centroids (tensors `harmful`, `harmless`)."""

    method: ClassVar[str] = "centroid"
    position: ClassVar[str] = "t_inst"
    legacy: ClassVar[bool] = True

    def score_point(self, acts: torch.Tensor) -> Scores:
        """Centroid margins of activations [n, n_layers, d_model]."""
        return centroid_margins(acts, self.tensors["harmful"], self.tensors["harmless"])
