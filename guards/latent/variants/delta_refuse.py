"""The Δrefuse read (the refusal baseline): the centroid rule on t_post_inst activations, with the refuse/accept
centroids every centroid, probe and span fit keeps alongside its own tensors (LatentGuard.refusal_guard)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from harmlens.errors import HarmlensError
from harmlens.guards.latent.config_base import GuardConfig, legacy_fields
from harmlens.guards.latent.variants.centroid import CentroidConfig, CentroidScorer


@dataclass(frozen=True)
class DeltaRefuseConfig(CentroidConfig):
    """The Δrefuse read is fitted alongside another variant, never alone; its guard keeps that variant's config."""

    variant: ClassVar[str] = "delta-refuse"
    position: ClassVar[str] = "t_post_inst"
    fittable: ClassVar[bool] = False

    @classmethod
    def from_legacy(cls, meta: dict) -> GuardConfig:
        """An older Δrefuse file's config: the centroid settings it was fitted with."""
        return CentroidConfig(**legacy_fields(meta))


class DeltaRefuseScorer(CentroidScorer):
    """Centroid margins at t_post_inst (the refuse/accept centroids, stored as `harmful`/`harmless` in its guard)."""

    position: ClassVar[str] = "t_post_inst"
    own_config: ClassVar[bool] = False


def refusal_read(tensors: dict[str, torch.Tensor], metadata: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of the Δrefuse guard a fitted guard carries: its refuse/accept centroids as the classes,
    its alpha_refuse as α, the same layers and settings."""
    if "refuse" not in tensors or "accept" not in tensors:
        raise HarmlensError("this guard file has no t_post-inst centroids (refuse/accept)")
    cls = DeltaRefuseConfig
    meta = {**metadata, "variant": cls.variant, "method": cls.method, "position": cls.position}
    meta["alpha"] = metadata.get("alpha_refuse", 0.0)
    return {"harmful": tensors["refuse"], "harmless": tensors["accept"]}, meta
