"""Which fit function fits which variant (`register_fitter`), and `fit_guard`, what LatentGuard.fit runs.

The inference registry (harmlens.guards.latent.registry) knows how each variant scores; this one knows how each is
fitted, so a deployed guard never imports fitting code. A new variant registers both (its fitter here).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from harmlens.errors import HarmlensError
from harmlens.guards.fitting.dual_fit import fit_dual_guard
from harmlens.guards.fitting.fit import fit_tinst_guard
from harmlens.guards.fitting.span_fit import fit_span_guard
from harmlens.guards.fitting.splits import check_disjoint
from harmlens.guards.latent.config_base import GuardConfig
from harmlens.guards.latent.registry import get_variant
from harmlens.guards.latent.variants import DualConfig
from harmlens.runtime import ChatPrompt

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

Fitter = Callable[
    ..., Any
]  # fitter(make_guard, model, harmful, harmless, config, *, val_harmful, val_harmless, progress)
_FITTERS: dict[str, Fitter] = {}


def register_fitter(variant: str, fitter: Fitter) -> None:
    """Fit the registered variant `variant` with `fitter`; HarmlensError if it is not registered or already has one."""
    get_variant(variant)  # one line naming the registered variants otherwise
    if variant in _FITTERS:
        raise HarmlensError(
            f"guard variant {variant!r} already has a fitter ({getattr(_FITTERS[variant], '__name__', '?')})"
        )
    _FITTERS[variant] = fitter


def fitter_for(config: object) -> Fitter:
    """The fit function of this config's variant; HarmlensError (one line) for anything else."""
    if not isinstance(config, GuardConfig):
        raise HarmlensError(f"fit takes a guard config (e.g. DualConfig()), got {type(config).__name__}")
    variant = get_variant(config.variant)
    if variant.name not in _FITTERS:
        raise HarmlensError(
            f"guard variant {variant.name!r} cannot be fitted on its own; fittable: {', '.join(_FITTERS)}"
        )
    return _FITTERS[variant.name]


def fit_guard(
    make_guard: Callable[[dict, dict], Any],
    model: TransformerBridge,
    harmful: Sequence[str | ChatPrompt],
    harmless: Sequence[str | ChatPrompt],
    config: GuardConfig | None = None,
    *,
    val_harmful: Sequence[str | ChatPrompt] | None = None,
    val_harmless: Sequence[str | ChatPrompt] | None = None,
    progress: bool = False,
):
    """Fit the variant `config` names (default DualConfig(): t_inst + span read, calibrated at 5% FPR);
    `make_guard(tensors, metadata)` builds the guard."""
    config = DualConfig() if config is None else config
    fitter = fitter_for(config)
    check_disjoint(harmful, harmless)  # fit(P, P) would return a meaningless guard
    val = {"val_harmful": val_harmful, "val_harmless": val_harmless}
    return fitter(make_guard, model, harmful, harmless, config, **val, progress=progress)


for _name in ("centroid", "probe"):
    register_fitter(_name, fit_tinst_guard)
for _name in ("span-linear", "span-mlp"):
    register_fitter(_name, fit_span_guard)
register_fitter("dual", fit_dual_guard)
