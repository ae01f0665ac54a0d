"""The span-mlp variant (the default span guard): one small MLP token probe over all read layers, read at every token
up to t_inst (top score); see harmlens.guards.latent.mlp_probe for why an MLP."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, cast

import torch

from harmlens.errors import HarmlensError
from harmlens.guards.latent.config_base import SpanConfig, help_field, mlp_from_dict
from harmlens.guards.latent.mlp_probe import MLP_KEYS, MLPProbeConfig, mlp_scores
from harmlens.guards.latent.scorer import SpanScorer
from harmlens.guards.latent.span_scoring import Scores


@dataclass(frozen=True)
class SpanMLPConfig(SpanConfig):
    """Span guard with one small MLP token probe over all read layers (the default span guard)."""

    variant: ClassVar[str] = "span-mlp"
    token_probe: ClassVar[str | None] = "mlp"

    mlp: MLPProbeConfig | None = help_field("MLP training settings (None: the defaults, seeded with `seed`)", None)

    @classmethod
    def from_legacy(cls, meta: dict) -> SpanMLPConfig:
        """A span-mlp config from older metadata, with the MLP settings it recorded."""
        return dataclasses.replace(cast(SpanMLPConfig, super().from_legacy(meta)), mlp=meta.get("mlp"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.mlp, dict):
            object.__setattr__(self, "mlp", mlp_from_dict(self.mlp))
        elif self.mlp is not None and not isinstance(self.mlp, MLPProbeConfig):
            raise HarmlensError(f"mlp must be an MLPProbeConfig, got {type(self.mlp).__name__}")


class SpanMLPScorer(SpanScorer):
    """The top token's MLP logit, split exactly into per-layer shares (tensors mlp_*)."""

    token_probe: ClassVar[str | None] = "mlp"
    legacy: ClassVar[bool] = True
    keys: ClassVar[tuple[str, ...]] = ("harmful", "harmless", *MLP_KEYS)

    def score_point(self, acts: torch.Tensor) -> Scores:
        """MLP logits of activations [n, n_layers, d_model] at one token each."""
        return mlp_scores(dict(self.tensors), acts)
