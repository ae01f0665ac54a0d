"""The deployable Latent Guard: its variants, fitting, guarded generation and image-prompt reads.

Imports nothing from tuning, organisms or evaluation, so a deployment carries only what it runs.
"""

from harmlens.guards.latent.guard import LatentGuard, Verdict
from harmlens.guards.latent.guarded import GuardedModel, GuardedReply

__all__ = ["GuardedModel", "GuardedReply", "LatentGuard", "Verdict"]
