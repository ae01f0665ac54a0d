"""One frozen config per Latent Guard variant, and the registry mapping a variant's name to its config class.

A guard file records its config (`to_dict`) and `config_from_dict` restores it, so a fit is reproducible from the file.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from harmlens.errors import HarmlensError
from harmlens.guards.latent.mlp_probe import MLPProbeConfig

Wrappers = str | tuple[tuple[str, ...], ...] | None


def _help(text: str, default: Any = dataclasses.MISSING, **kw) -> Any:
    return field(default=default, metadata={"help": text}, **kw)


@dataclass(frozen=True)
class GuardConfig:
    """Settings shared by every variant; a variant's class names how it reads and scores."""

    variant: ClassVar[str]
    method: ClassVar[str]  # 'centroid' or 'probe'
    position: ClassVar[str]  # 't_inst' or 'span'
    token_probe: ClassVar[str | None] = None

    layers: tuple[int, ...] | None = _help("absolute layers read (None: chosen on held-out prompts)", None)
    target_fpr: float | None = _help("calibrate α so the expected FPR on new harmless prompts is ≤ this", None)
    val_fraction: float = _help("share of each set held out for the layer/scale choice and α (no val sets)", 0.25)
    balance: bool = _help("read each plain fit prompt with three endings (word, '.', '?')", True)
    system: str | None = _help("system prompt the guard renders prompts with", None)
    batch_size: int = _help("prompts per forward pass while fitting", 16)
    seed: int = _help("seed of the held-out split (and of the span fit's sampling)", 0)

    def __post_init__(self) -> None:
        if self.layers is not None:
            bad = isinstance(self.layers, (str, bytes)) or not isinstance(self.layers, (list, tuple))
            if bad or not self.layers or not all(_int(x) and x >= 0 for x in self.layers):
                raise HarmlensError(f"layers must be a list of layer numbers, got {self.layers!r}")
            object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        if self.target_fpr is not None and not (_real(self.target_fpr) and 0 <= self.target_fpr < 1):
            raise HarmlensError(f"target_fpr must be in [0, 1), got {self.target_fpr!r}")
        if not (_real(self.val_fraction) and 0 < self.val_fraction < 1):
            raise HarmlensError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if not isinstance(self.balance, bool):
            raise HarmlensError(f"balance must be true or false, got {self.balance!r}")
        if self.system is not None and not isinstance(self.system, str):
            raise HarmlensError(f"system must be a string or None, got {type(self.system).__name__}")
        if not (_int(self.batch_size) and self.batch_size >= 1) or not _int(self.seed):
            raise HarmlensError(f"batch_size must be ≥ 1 and seed an integer, got {self.batch_size!r}, {self.seed!r}")

    def to_dict(self) -> dict:
        """JSON-ready settings with the variant's name (what a guard file records)."""
        out: dict[str, Any] = {"variant": self.variant}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, MLPProbeConfig):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            out[f.name] = value
        return out


@dataclass(frozen=True)
class CentroidConfig(GuardConfig):
    """Zhao et al.'s rule at t_inst: per-layer Δ to the harmful/harmless centroids, averaged over a layer window."""

    variant: ClassVar[str] = "centroid"
    method: ClassVar[str] = "centroid"
    position: ClassVar[str] = "t_inst"


@dataclass(frozen=True)
class ProbeConfig(GuardConfig):
    """One L2-regularised logistic probe per layer at t_inst, logits averaged over a layer window."""

    variant: ClassVar[str] = "probe"
    method: ClassVar[str] = "probe"
    position: ClassVar[str] = "t_inst"


@dataclass(frozen=True)
class SpanConfig(GuardConfig):
    """A token probe read at every token up to t_inst (top score), fitted on prompts also wrapped in jailbreaks."""

    method: ClassVar[str] = "probe"
    position: ClassVar[str] = "span"

    wrappers: Wrappers = _help("jailbreak-name groups wrapping every fit prompt ('default'; None: plain)", "default")
    negatives_per_prompt: int | None = _help("negative tokens sampled per wrapped prompt (None: all)", 32)
    batch_size: int = _help("prompts per forward pass while fitting", 8)
    two_part: bool = _help("also fit a t_inst probe; each part scaled on harmless prompts, the larger decides", False)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "wrappers", _wrapper_groups(self.wrappers))
        n = self.negatives_per_prompt
        if n is not None and not (_int(n) and n >= 1):
            raise HarmlensError(f"negatives_per_prompt must be ≥ 1 or None, got {n!r}")
        if not isinstance(self.two_part, bool):
            raise HarmlensError(f"two_part must be true or false, got {self.two_part!r}")


@dataclass(frozen=True)
class SpanLinearConfig(SpanConfig):
    """Span guard with a logistic token probe per layer; two-part (plus a t_inst probe) by default."""

    variant: ClassVar[str] = "span-linear"
    token_probe: ClassVar[str | None] = "linear"

    two_part: bool = _help("also fit a t_inst probe; each part scaled on harmless prompts, the larger decides", True)


@dataclass(frozen=True)
class SpanMLPConfig(SpanConfig):
    """Span guard with one small MLP token probe over all read layers (the default span guard)."""

    variant: ClassVar[str] = "span-mlp"
    token_probe: ClassVar[str | None] = "mlp"

    mlp: MLPProbeConfig | None = _help("MLP training settings (None: the defaults, seeded with `seed`)", None)

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.mlp, dict):
            object.__setattr__(self, "mlp", _mlp_from_dict(self.mlp))
        elif self.mlp is not None and not isinstance(self.mlp, MLPProbeConfig):
            raise HarmlensError(f"mlp must be an MLPProbeConfig, got {type(self.mlp).__name__}")


VARIANTS: dict[str, type[GuardConfig]] = {
    c.variant: c for c in (CentroidConfig, ProbeConfig, SpanLinearConfig, SpanMLPConfig)
}


def config_class(variant: object) -> type[GuardConfig]:
    """The config class of a variant name; HarmlensError listing the known ones otherwise."""
    if not isinstance(variant, str) or variant not in VARIANTS:
        raise HarmlensError(f"unknown guard variant {variant!r}; known: {', '.join(VARIANTS)}")
    return VARIANTS[variant]


def config_from_dict(data: object) -> GuardConfig:
    """The config a guard file recorded (`GuardConfig.to_dict`); HarmlensError on unknown variants or fields."""
    if not isinstance(data, dict):
        raise HarmlensError(f"a guard config must be an object, got {type(data).__name__}")
    cls = config_class(data.get("variant"))
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names - {"variant"})
    if unknown:
        raise HarmlensError(f"unknown {cls.variant} config field(s): {', '.join(unknown)}")
    return cls(**{k: v for k, v in data.items() if k != "variant"})


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


def _wrapper_groups(wrappers: object) -> Wrappers:
    """'default', None, or groups of jailbreak names (a name or a flat list of names is one group)."""
    if wrappers is None or wrappers == "default":
        return "default" if wrappers else None
    if isinstance(wrappers, str):
        wrappers = [wrappers]
    if not isinstance(wrappers, (list, tuple)):
        raise HarmlensError(f"wrappers must be 'default', None or lists of jailbreak names, got {wrappers!r}")
    if all(isinstance(w, str) for w in wrappers):
        wrappers = [wrappers]
    groups = [[w] if isinstance(w, str) else w for w in wrappers]
    if any(not isinstance(g, (list, tuple)) or not all(isinstance(w, str) for w in g) for g in groups):
        raise HarmlensError(f"wrappers must be jailbreak names, got {wrappers!r}")
    if any(not g for g in groups):
        raise HarmlensError("an empty wrapper group")
    return tuple(tuple(g) for g in groups)


def _mlp_from_dict(data: dict) -> MLPProbeConfig:
    names = {f.name for f in dataclasses.fields(MLPProbeConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise HarmlensError(f"unknown mlp config field(s): {', '.join(unknown)}")
    return MLPProbeConfig(**data)


def _int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
