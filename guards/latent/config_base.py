"""The settings every Latent Guard variant shares (GuardConfig) and those the span variants share (SpanConfig).

Each variant's own config lives in its file under harmlens.guards.latent.variants; a guard file records it (`to_dict`)
and harmlens.guards.latent.registry restores it, so a fit is reproducible from the file.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from harmlens.errors import HarmlensError
from harmlens.guards.latent.mlp_probe import MLPProbeConfig

Wrappers = str | tuple[tuple[str, ...], ...] | None


def help_field(text: str, default: Any = dataclasses.MISSING, **kw) -> Any:
    """A dataclass field whose help text the CLI and the docs show."""
    return field(default=default, metadata={"help": text}, **kw)


@dataclass(frozen=True)
class GuardConfig:
    """Settings shared by every variant; a variant's class names how it reads and scores."""

    variant: ClassVar[str]
    method: ClassVar[str]  # 'centroid' or 'probe' (what a guard file records, for older readers)
    position: ClassVar[str]  # 't_inst' or 'span'
    token_probe: ClassVar[str | None] = None
    fittable: ClassVar[bool] = True  # False: read only alongside another variant (the Δrefuse read)

    layers: tuple[int, ...] | None = help_field("absolute layers read (None: chosen on held-out prompts)", None)
    target_fpr: float | None = help_field("calibrate α so the expected FPR on new harmless prompts is ≤ this", None)
    val_fraction: float = help_field("share of each set held out for the layer/scale choice and α (no val sets)", 0.25)
    balance: bool = help_field("read each plain fit prompt with three endings (word, '.', '?')", True)
    system: str | None = help_field("system prompt the guard renders prompts with", None)
    batch_size: int = help_field("prompts per forward pass while fitting", 16)
    seed: int = help_field("seed of the held-out split (and of the span fit's sampling)", 0)

    def __post_init__(self) -> None:
        if self.layers is not None:
            bad = isinstance(self.layers, (str, bytes)) or not isinstance(self.layers, (list, tuple))
            if bad or not self.layers or not all(is_int(x) and x >= 0 for x in self.layers):
                raise HarmlensError(f"layers must be a list of layer numbers, got {self.layers!r}")
            object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        if self.target_fpr is not None and not (is_real(self.target_fpr) and 0 <= self.target_fpr < 1):
            raise HarmlensError(f"target_fpr must be in [0, 1), got {self.target_fpr!r}")
        if not (is_real(self.val_fraction) and 0 < self.val_fraction < 1):
            raise HarmlensError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if not isinstance(self.balance, bool):
            raise HarmlensError(f"balance must be true or false, got {self.balance!r}")
        if self.system is not None and not isinstance(self.system, str):
            raise HarmlensError(f"system must be a string or None, got {type(self.system).__name__}")
        if not (is_int(self.batch_size) and self.batch_size >= 1) or not is_int(self.seed):
            raise HarmlensError(f"batch_size must be ≥ 1 and seed an integer, got {self.batch_size!r}, {self.seed!r}")

    @classmethod
    def from_legacy(cls, meta: dict) -> GuardConfig:
        """The config a guard file written before configs were recorded implies (format v1/v2 metadata)."""
        fit = meta.get("fit") or {}
        return cls(**legacy_fields(meta), balance=bool(fit.get("balanced_endings", True)))

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
class SpanConfig(GuardConfig):
    """A token probe read at every token up to t_inst (top score), fitted on prompts also wrapped in jailbreaks (the
    fields span-linear and span-mlp share)."""

    method: ClassVar[str] = "probe"
    position: ClassVar[str] = "span"

    wrappers: Wrappers = help_field(
        "jailbreak-name groups wrapping every fit prompt ('default'; None: plain)", "default"
    )
    negatives_per_prompt: int | None = help_field("negative tokens sampled per wrapped prompt (None: all)", 32)
    batch_size: int = help_field("prompts per forward pass while fitting", 8)
    two_part: bool = help_field(
        "also fit a t_inst probe; each part scaled on harmless prompts, the larger decides", False
    )

    @classmethod
    def from_legacy(cls, meta: dict) -> GuardConfig:
        """A span guard's config from older metadata: two-part when it has scales, its fit wrappers."""
        fit = meta.get("fit") or {}
        return cls(**legacy_fields(meta), two_part=bool(meta.get("scales")), wrappers=fit.get("wrappers") or None)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "wrappers", _wrapper_groups(self.wrappers))
        n = self.negatives_per_prompt
        if n is not None and not (is_int(n) and n >= 1):
            raise HarmlensError(f"negatives_per_prompt must be ≥ 1 or None, got {n!r}")
        if not isinstance(self.two_part, bool):
            raise HarmlensError(f"two_part must be true or false, got {self.two_part!r}")


def legacy_fields(meta: dict) -> dict[str, Any]:
    """The config fields every older guard file records: layers, target_fpr and the system prompt."""
    return {"layers": tuple(meta["layers"]), "target_fpr": meta.get("target_fpr"), "system": meta.get("system")}


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


def mlp_from_dict(data: dict) -> MLPProbeConfig:
    """An MLPProbeConfig from a guard file's dict; HarmlensError on unknown fields."""
    names = {f.name for f in dataclasses.fields(MLPProbeConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise HarmlensError(f"unknown mlp config field(s): {', '.join(unknown)}")
    return MLPProbeConfig(**data)


def is_int(x: object) -> bool:
    """An int that is not a bool."""
    return isinstance(x, int) and not isinstance(x, bool)


def is_real(x: object) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
