"""harmlens.guards: the deployable Latent Guard, its evaluation, the model organisms, and (adversarial) LoRA tuning.

Subpackages: `latent` (the guard you deploy), `evaluation`, `organisms`, `tuning`, `pipeline` (the main job and the
runs the CLIs call: `harmlens.guards.pipeline.run_main_job`), `cli` (argument parsing only).
"""

from harmlens.guards.evaluation import GuardReport, evaluate_guard
from harmlens.guards.latent import (
    CentroidConfig,
    GuardedModel,
    GuardedReply,
    LatentGuard,
    ProbeConfig,
    SpanLinearConfig,
    SpanMLPConfig,
    Verdict,
)
from harmlens.guards.organisms import build_organism, load_organism, organism_path
from harmlens.guards.tuning import Adapter, Example, Stage, TrainConfig, adversarial_train, train

__all__ = [
    "Adapter",
    "CentroidConfig",
    "Example",
    "GuardReport",
    "GuardedModel",
    "GuardedReply",
    "LatentGuard",
    "ProbeConfig",
    "SpanLinearConfig",
    "SpanMLPConfig",
    "Stage",
    "TrainConfig",
    "Verdict",
    "adversarial_train",
    "build_organism",
    "evaluate_guard",
    "load_organism",
    "organism_path",
    "train",
]
