"""The deployable Latent Guard: what runs at inference only. LatentGuard and its Verdict, the guard file, the input
policy, guarded generation, image-prompt reads, and one config + Scorer per variant, registered in `registry`.

Imports nothing from harmlens.attacks, nor from the fitting, tuning, organisms or evaluation packages, so a
deployment carries only what it runs (tests/core/test_layout.py budgets the closure). Fitting is
harmlens.guards.fitting (LatentGuard.fit imports it when called).
"""

from harmlens.guards.latent.config_base import GuardConfig
from harmlens.guards.latent.guard import LatentGuard, Verdict
from harmlens.guards.latent.guarded import GuardedModel, GuardedReply
from harmlens.guards.latent.mlp_probe import MLPProbeConfig
from harmlens.guards.latent.registry import VARIANTS, config_class, get_variant, register_variant, registered
from harmlens.guards.latent.scorer import Scorer, SpanScorer
from harmlens.guards.latent.variants import (
    CentroidConfig,
    DeltaRefuseConfig,
    DualConfig,
    ProbeConfig,
    SpanLinearConfig,
    SpanMLPConfig,
)

__all__ = [
    "VARIANTS",
    "CentroidConfig",
    "DeltaRefuseConfig",
    "DualConfig",
    "GuardConfig",
    "GuardedModel",
    "GuardedReply",
    "LatentGuard",
    "MLPProbeConfig",
    "ProbeConfig",
    "Scorer",
    "SpanLinearConfig",
    "SpanMLPConfig",
    "SpanScorer",
    "Verdict",
    "config_class",
    "get_variant",
    "register_variant",
    "registered",
]
