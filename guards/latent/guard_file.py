"""The guard file: format constants and the checks a file passes before it becomes a LatentGuard (hostile input).

Metadata (format, version, a registered variant, layers, a finite α, the calibration record, the recorded config) and
tensors (the keys the variant's scorer needs, shapes matching its layers and d_model, finite values) are checked; a
bad file is refused with one line. The variant is the registry's (harmlens.guards.latent.registry.variant_of); files
written before configs were recorded (no "config" key) get theirs rebuilt from the metadata (`from_legacy`).
"""

from __future__ import annotations

import math
import os

import torch

from harmlens.errors import HarmlensError
from harmlens.guards.latent.calibration import check_calibration_record
from harmlens.guards.latent.config_base import GuardConfig
from harmlens.guards.latent.registry import config_from_dict, variant_of
from harmlens.guards.latent.span_scoring import PROBE_KEYS, TINST_PROBE_KEYS
from harmlens.io import load_tensors

FORMAT = "harmlens.latent_guard"
VERSION = 1
MLP_VERSION = 2  # guard files with an MLP token probe: older readers refuse them with "written by a newer harmlens"
METHODS = ("centroid", "probe")  # what the built-in variants record (the registry decides what loads)
POSITIONS = ("t_inst", "t_post_inst", "span")  # span: every token up to t_inst, keeping the top score
__all__ = ["FORMAT", "METHODS", "MLP_VERSION", "POSITIONS", "PROBE_KEYS", "TINST_PROBE_KEYS", "VERSION"]
__all__ += ["check_metadata", "check_tensors", "guard_config", "legacy_config", "read_guard_file"]
_PER_LAYER = ("harmful", "harmless", "refuse", "accept", "probe_weight", "probe_mean", "tinst_probe_weight")
_PER_LAYER += ("tinst_probe_mean", "mlp_mean", "mlp_std")  # type: ignore[assignment]


def check_metadata(meta: dict) -> None:
    """Raise HarmlensError (one line) unless the variant is registered and layers, α and scales are well-formed."""
    variant_of(meta)
    layers = meta.get("layers")
    if not isinstance(layers, list) or not layers or not all(_int(x) and x >= 0 for x in layers):
        raise HarmlensError(f"guard layers must be a non-empty list of layer numbers, got {layers!r}")
    if _int(meta.get("n_layers")) and max(layers) > meta["n_layers"]:
        raise HarmlensError(f"guard layers {layers} go past the model's {meta['n_layers']} layers")
    for key in ("alpha", "alpha_refuse"):
        if key in meta and not _real(meta[key]):
            raise HarmlensError(f"guard {key} must be a finite number, got {meta[key]!r}")
    target = meta.get("target_fpr")
    if target is not None and not (_real(target) and 0 <= target < 1):
        raise HarmlensError(f"guard target_fpr must be None or in [0, 1), got {target!r}")
    if meta.get("system") is not None and not isinstance(meta.get("system"), str):
        raise HarmlensError("guard system prompt must be a string")
    scales = meta.get("scales")
    if scales is not None:
        ok = isinstance(scales, dict) and set(scales) <= {"span", "t_inst"} and bool(scales)
        ok = ok and all(
            isinstance(v, list) and len(v) == 2 and all(map(_real, v)) and v[1] > 0 for v in scales.values()
        )
        if not ok:
            raise HarmlensError(f"guard scales must map span/t_inst to [center, width > 0], got {scales!r}")
    fit = meta.get("fit", {})
    if not isinstance(fit, dict):
        raise HarmlensError("guard fit record must be an object")
    for record in (fit.get("calibration"), meta.get("calibration")):
        problem = None if record is None else check_calibration_record(record)
        if problem:
            raise HarmlensError(f"guard {problem}")


def check_tensors(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Raise HarmlensError unless the tensors the variant needs are present, finite and of the right shapes."""
    need = variant_of(meta).scorer.tensor_keys(meta)
    missing = [k for k in need if k not in tensors]
    if missing:
        raise HarmlensError(f"lacks tensors: {', '.join(missing)}")
    n, d = len(meta["layers"]), meta.get("d_model")
    hidden = tensors["mlp_w1"].shape[0] if "mlp_w1" in tensors else None
    want: dict[str, tuple] = {k: (n, d) for k in _PER_LAYER} | {"probe_bias": (n,), "tinst_probe_bias": (n,)}
    want |= {"mlp_w1": (hidden, n, d), "mlp_b1": (hidden,), "mlp_w2": (hidden,), "mlp_b2": (1,)}
    for key, tensor in tensors.items():
        if not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
            raise HarmlensError(f"tensor {key} is not a finite float tensor")
        if key in want and tuple(tensor.shape) != want[key]:
            raise HarmlensError(f"tensor {key} has shape {tuple(tensor.shape)}, the metadata says {want[key]}")
    mlp = meta.get("mlp")
    if hidden is not None and isinstance(mlp, dict) and mlp.get("hidden") != hidden:
        raise HarmlensError(f"the MLP probe has {hidden} hidden units, its config says {mlp.get('hidden')!r}")


def guard_config(meta: dict) -> GuardConfig:
    """The config the file recorded, or (older files) the one its metadata implies; checked against its variant (a
    Δrefuse guard keeps the config of the variant it was fitted alongside)."""
    variant = variant_of(meta)
    if "config" not in meta:
        return variant.config.from_legacy(meta)
    config = config_from_dict(meta["config"])
    if variant.scorer.own_config and config.variant != variant.name:
        raise HarmlensError(f"its config ({config.variant}) contradicts its variant ({variant.name})")
    return config


def legacy_config(meta: dict) -> GuardConfig:
    """The config of a guard file written before configs were recorded (format v1/v2)."""
    return variant_of(meta).config.from_legacy(meta)


def read_guard_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict, GuardConfig]:
    """(tensors, metadata, config) of a guard file that passed every check; HarmlensError naming the file else."""
    tensors, meta = load_tensors(path)
    if meta.get("format") != FORMAT:
        raise HarmlensError(f"{path} is not a harmlens latent-guard file (format {meta.get('format')!r})")
    version = meta.get("version", 0)
    if not _int(version) or version < 1:
        raise HarmlensError(f"{path}: bad guard format version {version!r}")
    if version > MLP_VERSION:
        raise HarmlensError(f"{path} was written by a newer harmlens (guard format v{version})")
    try:
        if not (_int(meta.get("d_model")) and meta["d_model"] > 0):
            raise HarmlensError(f"d_model must be a positive integer, got {meta.get('d_model')!r}")
        check_metadata(meta)
        check_tensors(tensors, meta)
        config = guard_config(meta)
    except HarmlensError as exc:
        raise HarmlensError(f"{path} (guard format v{version}): {exc}") from None
    return tensors, meta, config


def _int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
