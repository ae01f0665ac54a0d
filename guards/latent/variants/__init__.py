"""The built-in Latent Guard variants, one file each (its config and its Scorer), registered here in order.

Adding a variant: a new file beside these and one `register_variant(Config, Scorer)` line below (its fitting
registers in harmlens.guards.fitting with `register_fitter`).
"""

from harmlens.guards.latent.registry import register_variant
from harmlens.guards.latent.variants.centroid import CentroidConfig, CentroidScorer
from harmlens.guards.latent.variants.delta_refuse import DeltaRefuseConfig, DeltaRefuseScorer
from harmlens.guards.latent.variants.dual import DualConfig, DualScorer
from harmlens.guards.latent.variants.probe import ProbeConfig, ProbeScorer
from harmlens.guards.latent.variants.span_linear import SpanLinearConfig, SpanLinearScorer
from harmlens.guards.latent.variants.span_mlp import SpanMLPConfig, SpanMLPScorer

register_variant(CentroidConfig, CentroidScorer)
register_variant(ProbeConfig, ProbeScorer)
register_variant(SpanLinearConfig, SpanLinearScorer)
register_variant(SpanMLPConfig, SpanMLPScorer)
register_variant(DeltaRefuseConfig, DeltaRefuseScorer)
register_variant(DualConfig, DualScorer)

__all__ = [
    "CentroidConfig",
    "CentroidScorer",
    "DeltaRefuseConfig",
    "DeltaRefuseScorer",
    "DualConfig",
    "DualScorer",
    "ProbeConfig",
    "ProbeScorer",
    "SpanLinearConfig",
    "SpanLinearScorer",
    "SpanMLPConfig",
    "SpanMLPScorer",
]
