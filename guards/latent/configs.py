"""The variants' configs by name (the names callers imported from here before the registry), and the older
(method, read, token_probe) triple the CLI still speaks."""

from __future__ import annotations

from harmlens.errors import HarmlensError
from harmlens.guards.latent.config_base import GuardConfig, SpanConfig, Wrappers
from harmlens.guards.latent.registry import VARIANTS, config_class, config_from_dict
from harmlens.guards.latent.variants import (
    CentroidConfig,
    DeltaRefuseConfig,
    DualConfig,
    ProbeConfig,
    SpanLinearConfig,
    SpanMLPConfig,
)

__all__ = ["VARIANTS", "CentroidConfig", "DeltaRefuseConfig", "DualConfig", "GuardConfig", "ProbeConfig", "SpanConfig"]
__all__ += ["SpanLinearConfig", "SpanMLPConfig", "Wrappers", "config_class", "config_from_dict", "variant_for"]


def variant_for(method: str, read: str = "t_inst", token_probe: str = "mlp") -> type[GuardConfig]:
    """The config class for the older (method, read, token_probe) triple the CLI still speaks."""
    if read not in ("t_inst", "span"):
        raise HarmlensError(f"read must be 't_inst' or 'span', got {read!r}")
    if read == "span" and method != "probe":
        raise HarmlensError("read='span' needs method='probe' (a centroid rule has no token-level training)")
    if read == "span":
        if token_probe not in ("mlp", "linear"):
            raise HarmlensError(f"token_probe must be one of ('mlp', 'linear'), got {token_probe!r}")
        return SpanMLPConfig if token_probe == "mlp" else SpanLinearConfig
    return config_class(method)
