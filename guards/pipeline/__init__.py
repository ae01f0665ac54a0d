"""Library runs the guards CLIs call: the main job, adversarial training with its evaluation, guard fit/eval."""

from harmlens.guards.pipeline.adversarial_run import AdversarialRun, run_adversarial, train_run
from harmlens.guards.pipeline.job import run_main_job
from harmlens.guards.pipeline.settings import STEPS, MainJobSettings
from harmlens.guards.pipeline.subjects import load_subject

__all__ = ["STEPS", "AdversarialRun", "MainJobSettings", "load_subject", "run_adversarial", "run_main_job", "train_run"]
