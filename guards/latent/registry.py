"""The variant registry (as SAELens registers SAE architectures): a variant's name → its config class and scorer class.

Adding a variant is one file under harmlens.guards.latent.variants (its config and its Scorer) and one
`register_variant(Config, Scorer)` call in harmlens.guards.latent.variants/__init__.py; LatentGuard, the guard file
checks and the CLI find it here. Its fitting registers separately (harmlens.guards.fitting.register_fitter), so
this module, like everything in harmlens.guards.latent, runs at inference only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import NamedTuple

from harmlens.errors import HarmlensError
from harmlens.guards.latent.config_base import GuardConfig
from harmlens.guards.latent.scorer import Scorer


class Variant(NamedTuple):
    """One registered variant: its name, its config class and its scorer class."""

    name: str
    config: type[GuardConfig]
    scorer: type[Scorer]


_REGISTRY: dict[str, Variant] = {}
VARIANTS: dict[str, type[GuardConfig]] = {}  # name → config class of each variant `LatentGuard.fit` can fit


def register_variant(config_cls: type[GuardConfig], scorer_cls: type[Scorer]) -> Variant:
    """Register a variant under its config's `variant` name; HarmlensError if that name is taken or a class is not
    a GuardConfig / Scorer subclass."""
    if not (isinstance(config_cls, type) and issubclass(config_cls, GuardConfig)):
        raise HarmlensError(f"register_variant takes a GuardConfig subclass, got {config_cls!r}")
    if not (isinstance(scorer_cls, type) and issubclass(scorer_cls, Scorer)):
        raise HarmlensError(f"register_variant takes a Scorer subclass, got {scorer_cls!r}")
    name = getattr(config_cls, "variant", None)
    if not isinstance(name, str) or not name:
        raise HarmlensError(f"{config_cls.__name__} names no variant (set its `variant` class attribute)")
    if name in _REGISTRY:
        raise HarmlensError(f"guard variant {name!r} is already registered ({_REGISTRY[name].config.__name__})")
    scorer_cls.variant = name
    _REGISTRY[name] = Variant(name, config_cls, scorer_cls)
    if config_cls.fittable:
        VARIANTS[name] = config_cls
    return _REGISTRY[name]


def registered() -> tuple[str, ...]:
    """Names of every registered variant, in registration order."""
    return tuple(_REGISTRY)


def get_variant(name: object) -> Variant:
    """The registered variant of this name; HarmlensError naming the registered ones otherwise."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise HarmlensError(f"unknown guard variant {name!r}; registered: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def config_class(variant: object) -> type[GuardConfig]:
    """The config class of a variant `LatentGuard.fit` can fit; HarmlensError listing the known ones otherwise."""
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


def variant_of(meta: Mapping) -> Variant:
    """The variant a guard's metadata is: the one its `variant` key names, else the one built-in (`legacy`) variant
    whose scorer reads its method/position/token_probe (the built-in variants' files record those, not a name; a
    new variant's fit writes `variant`)."""
    if "variant" in meta:
        variant = get_variant(meta["variant"])
        variant.scorer.check(meta)
        return variant
    found = [v for v in _REGISTRY.values() if v.scorer.legacy and v.scorer.matches(meta)]
    if len(found) != 1:
        what = "/".join(repr(meta.get(k)) for k in ("method", "position", "token_probe"))
        why = "no" if not found else "more than one"
        raise HarmlensError(
            f"unknown guard method/position/token_probe {what}: {why} registered variant reads it "
            f"(registered: {', '.join(_REGISTRY)})"
        )
    return found[0]
