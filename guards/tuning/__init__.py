"""LoRA tuning: the training loop with kill-safe resume, adapters, checkpoints, and adversarial training on RMA."""

from harmlens.guards.tuning.adapter import Adapter
from harmlens.guards.tuning.adversarial import Stage, adversarial_train
from harmlens.guards.tuning.encoding import Example
from harmlens.guards.tuning.training import TrainConfig, train

__all__ = ["Adapter", "Example", "Stage", "TrainConfig", "adversarial_train", "train"]
