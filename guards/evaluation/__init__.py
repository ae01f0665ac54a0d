"""Evaluating guards: detection metrics and ROC, the baselines they are compared with, and the evaluation sets."""

from harmlens.guards.evaluation.report import GuardReport, evaluate_guard

__all__ = ["GuardReport", "evaluate_guard"]
