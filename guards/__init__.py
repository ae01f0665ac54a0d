"""harmlens.guards: the deployable Latent Guard, its evaluation, the model organisms, and (adversarial) LoRA tuning.

Subpackages: `latent` (the guard you deploy: inference only), `fitting` (fitting guards; `LatentGuard.fit` imports it
when called), `evaluation`, `organisms`, `tuning`, `pipeline` (the main job and the
runs the CLIs call: `harmlens.guards.pipeline.run_main_job`), `cli` (argument parsing only). The names below are
imported on first use, so `from harmlens.guards import LatentGuard` loads the deployable guard and nothing else.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "harmlens.guards.evaluation": ("GuardReport", "evaluate_guard"),
    "harmlens.guards.latent": (
        "CentroidConfig",
        "DualConfig",
        "GuardedModel",
        "GuardedReply",
        "LatentGuard",
        "ProbeConfig",
        "SpanLinearConfig",
        "SpanMLPConfig",
        "Verdict",
    ),
    "harmlens.guards.organisms": ("build_organism", "load_organism", "organism_path"),
    "harmlens.guards.tuning": ("Adapter", "Example", "Stage", "TrainConfig", "adversarial_train", "train"),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = [
    "Adapter",
    "CentroidConfig",
    "DualConfig",
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

if TYPE_CHECKING:
    from harmlens.guards.evaluation import GuardReport, evaluate_guard
    from harmlens.guards.latent import (
        CentroidConfig,
        DualConfig,
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


def __getattr__(name: str) -> Any:
    """Import an exported name's subpackage on first use (PEP 562)."""
    if name not in _HOME:
        raise AttributeError(f"module 'harmlens.guards' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
