"""The span-linear variant: a logistic token probe per layer read at every token up to t_inst (top score), two-part by
default (a t_inst probe too, each part scaled on harmless prompts, the larger deciding)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from harmlens.guards.latent.config_base import SpanConfig, help_field
from harmlens.guards.latent.scorer import SpanScorer
from harmlens.guards.latent.span_scoring import PROBE_KEYS, Scores, probe_scores


@dataclass(frozen=True)
class SpanLinearConfig(SpanConfig):
    """Span guard with a logistic token probe per layer; two-part (plus a t_inst probe) by default."""

    variant: ClassVar[str] = "span-linear"
    token_probe: ClassVar[str | None] = "linear"

    two_part: bool = help_field(
        "also fit a t_inst probe; each part scaled on harmless prompts, the larger decides", True
    )


class SpanLinearScorer(SpanScorer):
    """The top token's per-layer probe logits (tensors probe_weight/_bias/_mean)."""

    token_probe: ClassVar[str | None] = "linear"
    legacy: ClassVar[bool] = True
    keys: ClassVar[tuple[str, ...]] = ("harmful", "harmless", *PROBE_KEYS)

    def score_point(self, acts: torch.Tensor) -> Scores:
        """Probe logits of activations [n, n_layers, d_model] at one token each."""
        return probe_scores(self.tensors, acts)
