"""Fitting Latent Guards: splits and calibration sets, centroids, probes and the MLP token probe, layer windows, part
scales, jailbreak-wrapped fit sets and image evaluation sets.

The only guard code besides evaluation, tuning, organisms and the pipeline that imports harmlens.attacks (the span
fit wraps prompts in its jailbreaks); harmlens.guards.latent, the deployable guard, imports none of it
(LatentGuard.fit imports it when called).
"""

from harmlens.guards.fitting.fit import balanced_variants, candidate_windows, fit_tinst_guard, select_window
from harmlens.guards.fitting.fitters import fit_guard, fitter_for, register_fitter
from harmlens.guards.fitting.images import IMAGE_SETTINGS, ImageAwareDetector, image_sets
from harmlens.guards.fitting.probe_training import train_mlp_probe, train_probes
from harmlens.guards.fitting.scales import fit_scales, scales_from
from harmlens.guards.fitting.span_fit import (
    FIT_NAMED,
    default_wrappers,
    fit_gptfuzzer_ids,
    fit_span_guard,
    held_out_gptfuzzer_ids,
    request_tokens,
    span_layers,
)
from harmlens.guards.fitting.splits import MIN_VAL, calibration_split, check_disjoint, check_set, digest, hold_out

__all__ = [
    "FIT_NAMED",
    "IMAGE_SETTINGS",
    "MIN_VAL",
    "ImageAwareDetector",
    "balanced_variants",
    "calibration_split",
    "candidate_windows",
    "check_disjoint",
    "check_set",
    "default_wrappers",
    "digest",
    "fit_gptfuzzer_ids",
    "fit_guard",
    "fit_scales",
    "fit_span_guard",
    "fit_tinst_guard",
    "fitter_for",
    "held_out_gptfuzzer_ids",
    "hold_out",
    "image_sets",
    "register_fitter",
    "request_tokens",
    "scales_from",
    "select_window",
    "span_layers",
    "train_mlp_probe",
    "train_probes",
]
