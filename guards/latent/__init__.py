"""The deployable Latent Guard: its variants (one config each), fitting, guarded generation and image-prompt reads.

Imports nothing from tuning, organisms or evaluation, so a deployment carries only what it runs.
"""

from harmlens.guards.latent.configs import (
    VARIANTS,
    CentroidConfig,
    GuardConfig,
    ProbeConfig,
    SpanLinearConfig,
    SpanMLPConfig,
    config_class,
)
from harmlens.guards.latent.guard import LatentGuard, Verdict
from harmlens.guards.latent.guarded import GuardedModel, GuardedReply
from harmlens.guards.latent.mlp_probe import MLPProbeConfig

__all__ = [
    "VARIANTS",
    "CentroidConfig",
    "GuardConfig",
    "GuardedModel",
    "GuardedReply",
    "LatentGuard",
    "MLPProbeConfig",
    "ProbeConfig",
    "SpanLinearConfig",
    "SpanMLPConfig",
    "Verdict",
    "config_class",
]
