"""harmlens.guards: LoRA safety-tuning, the aligned model organisms, and (later) latent guards."""

from guards.adapter import Adapter
from guards.adversarial import Stage, adversarial_train
from guards.guard_eval import GuardReport, evaluate_guard
from guards.guarded import GuardedModel, GuardedReply
from guards.latent_guard import LatentGuard, Verdict
from guards.organisms import build_organism, load_organism, organism_path
from guards.training import Example, TrainConfig, train

__all__ = ["Adapter", "Example", "GuardReport", "GuardedModel", "GuardedReply", "LatentGuard", "Stage", "TrainConfig",
           "Verdict", "adversarial_train", "build_organism", "evaluate_guard", "load_organism", "organism_path",
           "train"]
