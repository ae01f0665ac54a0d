"""The dual variant (the default guard): Zhao et al.'s t_inst centroid read AND the span-mlp token read, each part's
score standardised on harmless prompts, the larger deciding; α calibrated on several harmless sources.

Why: t_inst carries the model's belief about the whole request, but a jailbreak wrapper that ends in constant text
moves t_inst off the request; the span read's top token still sees the request inside a wrapper. Score =
max(z_t, z_s), z = (raw − center) / width per part (center = the 95th percentile of the part's raw scores on
held-out harmless prompts, width = center − their median), so each part counts on the same harmless scale.
`corroborate=c` lets the span part count only when t_inst is within c widths of its own threshold
(max(z_t, min(z_s, z_t + c))); on the 135M text organism that costs most of the wrapped recall and does not lower
XSTest-safe flags (t_inst rates XSTest-safe prompts as more harmful than wrapped harmful requests;
docs/results/guard_variants.md), so the default is None. α: harmlens.guards.fitting.dual_fit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch

from harmlens.errors import HarmlensError
from harmlens.guards.latent.config_base import SpanConfig, help_field, is_real, mlp_from_dict
from harmlens.guards.latent.mlp_probe import MLP_KEYS, MLPProbeConfig, mlp_scores
from harmlens.guards.latent.scorer import SpanScorer
from harmlens.guards.latent.span_scoring import Scores, top_position
from harmlens.guards.latent.variants.centroid import centroid_margins

SPAN_MLP_KEYS = tuple(f"span_{k}" for k in MLP_KEYS)  # the span part's MLP, over the span part's layers only
PARTS = ("t_inst", "span")
CALIBRATION_SOURCES = ("plain", "wrapped", "xstest")


@dataclass(frozen=True)
class DualConfig(SpanConfig):
    """t_inst centroid + span MLP token probe, the larger standardised part deciding; calibrated on several sources.
    `layers` fixes the t_inst part's layers (None: a window chosen on held-out prompts); the span part reads the span
    fit's default layers."""

    variant: ClassVar[str] = "dual"
    method: ClassVar[str] = "dual"
    token_probe: ClassVar[str | None] = "mlp"

    target_fpr: float | None = help_field("calibrate α so the expected FPR on new harmless prompts is ≤ this", 0.05)
    corroborate: float | None = help_field(
        "the span part flags only if t_inst is within this many widths of its threshold (None: either part flags)",
        None,
    )
    calibrate_on: tuple[str, ...] = help_field(
        "harmless sources α must hold on, each at target_fpr: plain held-out prompts, the same wrapped in the fit "
        "wrappers, shipped XSTest-safe calibration prompts",
        ("plain", "wrapped"),
    )
    mlp: MLPProbeConfig | None = help_field("MLP training settings (None: the defaults, seeded with `seed`)", None)

    def __post_init__(self) -> None:
        super().__post_init__()
        c = self.corroborate
        if c is not None and not (is_real(c) and c >= 0):
            raise HarmlensError(f"corroborate must be a number ≥ 0 or None, got {c!r}")
        sources = self.calibrate_on
        if isinstance(sources, str) or not isinstance(sources, (list, tuple)) or not sources:
            raise HarmlensError(f"calibrate_on must be a list of {CALIBRATION_SOURCES}, got {sources!r}")
        if any(s not in CALIBRATION_SOURCES for s in sources) or "plain" not in sources:
            raise HarmlensError(
                f"calibrate_on must include 'plain' and name only {CALIBRATION_SOURCES}, got {sources!r}"
            )
        object.__setattr__(self, "calibrate_on", tuple(dict.fromkeys(sources)))
        if self.two_part:
            raise HarmlensError("two_part is a span-linear setting; the dual variant always reads both parts")
        if isinstance(self.mlp, dict):
            object.__setattr__(self, "mlp", mlp_from_dict(self.mlp))
        elif self.mlp is not None and not isinstance(self.mlp, MLPProbeConfig):
            raise HarmlensError(f"mlp must be an MLPProbeConfig, got {type(self.mlp).__name__}")

    @classmethod
    def from_legacy(cls, meta: dict) -> DualConfig:
        """Dual files always record their config; this exists for the interface."""
        return dataclasses.replace(cls(), seed=int(meta.get("seed", 0)))


def corroborated(z_t: torch.Tensor, z_s: torch.Tensor, c: float | None) -> torch.Tensor:
    """max(z_t, min(z_s, z_t + c)): the span part counts only when t_inst is within c of the threshold (c=None: max)."""
    span = z_s if c is None else torch.minimum(z_s, z_t + c)
    return torch.maximum(z_t, span)


class DualScorer(SpanScorer):
    """Centroid margins at t_inst (rows metadata['parts']['t_inst']) and the span MLP's top token (rows
    metadata['parts']['span']), each scaled by metadata['scales'], combined by `corroborated`."""

    method: ClassVar[str] = "dual"
    token_probe: ClassVar[str | None] = "mlp"
    keys: ClassVar[tuple[str, ...]] = ("harmful", "harmless", *SPAN_MLP_KEYS)

    @classmethod
    def check(cls, meta: Mapping) -> None:
        """Its method/position, two parts whose layers are among the guard's, both scales and a valid corroborate."""
        super().check(meta)
        layers, parts = meta.get("layers") or [], meta.get("parts")
        if not isinstance(parts, dict) or set(parts) != set(PARTS):
            raise HarmlensError(f"a dual guard needs parts {{t_inst, span}} with their layers, got {parts!r}")
        for name, rows in parts.items():
            if not isinstance(rows, list) or not rows or not set(rows) <= set(layers):
                raise HarmlensError(f"dual part {name} layers {rows!r} must be a non-empty subset of {layers}")
        if not isinstance(meta.get("scales"), dict) or set(meta["scales"]) != set(PARTS):
            raise HarmlensError("a dual guard needs scales for both parts (t_inst, span)")
        c = meta.get("corroborate")
        if c is not None and not (is_real(c) and c >= 0):
            raise HarmlensError(f"dual corroborate must be a number ≥ 0 or None, got {c!r}")

    @classmethod
    def tensor_keys(cls, meta: Mapping) -> tuple[str, ...]:
        """Union-layer centroids (the t_inst part reads its rows) and the span part's MLP."""
        return cls.keys

    def _rows(self, part: str) -> list[int]:
        layers = [int(x) for x in self.metadata["layers"]]
        return [layers.index(int(x)) for x in self.metadata["parts"][part]]

    def parts(self, acts: torch.Tensor) -> dict[str, Scores]:
        """Raw (score [n], per-layer [n, part layers]) of each part from a span read [n, layers, n_pos, d] (the read
        ends at t_inst)."""
        t, s = self._rows("t_inst"), self._rows("span")
        centroids = (self.tensors["harmful"][t], self.tensors["harmless"][t])
        mlp = {k: self.tensors[f"span_{k}"] for k in MLP_KEYS}
        return {
            "t_inst": centroid_margins(acts[:, t, -1], *centroids),
            "span": top_position(lambda a: mlp_scores(mlp, a), acts[:, s]),
        }

    def score_point(self, acts: torch.Tensor) -> Scores:
        """A read of one position per prompt [n, layers, d] (t_inst): the span is that one token."""
        return self.score_span(acts[:, :, None])

    def score_span(self, acts: torch.Tensor) -> Scores:
        """(combined score [n], per-layer [n, layers]: the deciding part's scaled per-layer scores, 0 elsewhere)."""
        raw, scales = self.parts(acts), self.metadata["scales"]
        z = {k: (raw[k][0] - scales[k][0]) / scales[k][1] for k in PARTS}
        c = self.metadata.get("corroborate")
        score = corroborated(z["t_inst"], z["span"], None if c is None else float(c))
        per_layer = torch.zeros(acts.shape[0], acts.shape[1])
        by_t = z["t_inst"] >= score - 1e-12
        for part, mask in (("t_inst", by_t), ("span", ~by_t)):
            rows = torch.tensor(self._rows(part))
            scaled = (raw[part][1] - scales[part][0]) / scales[part][1]
            per_layer[:, rows] = torch.where(mask[:, None], scaled.float(), per_layer[:, rows])
        return score.float(), per_layer
