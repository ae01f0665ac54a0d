"""The probe variant: one L2-regularised logistic probe per layer at t_inst, logits averaged over a layer window."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from harmlens.guards.latent.config_base import GuardConfig
from harmlens.guards.latent.scorer import Scorer
from harmlens.guards.latent.span_scoring import PROBE_KEYS, Scores, probe_scores


@dataclass(frozen=True)
class ProbeConfig(GuardConfig):
    """One L2-regularised logistic probe per layer at t_inst, logits averaged over a layer window."""

    variant: ClassVar[str] = "probe"
    method: ClassVar[str] = "probe"
    position: ClassVar[str] = "t_inst"


class ProbeScorer(Scorer):
    """Per-layer logistic-probe logits at t_inst (tensors probe_weight/_bias/_mean; the centroids are kept too)."""

    method: ClassVar[str] = "probe"
    position: ClassVar[str] = "t_inst"
    legacy: ClassVar[bool] = True
    keys: ClassVar[tuple[str, ...]] = ("harmful", "harmless", *PROBE_KEYS)

    def score_point(self, acts: torch.Tensor) -> Scores:
        """Probe logits of activations [n, n_layers, d_model]."""
        return probe_scores(self.tensors, acts)
