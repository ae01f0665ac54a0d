"""Where harmlens caches models, and the registry of model aliases (e.g. 'organism') other packages provide."""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

from harmlens.errors import HarmlensError

ALIAS_GROUP = "harmlens.model_aliases"  # entry-point group: name -> callable(variant: str) -> local model folder

_ALIASES: dict[str, Callable[[str], Path]] = {}


def cache_dir() -> Path:
    """Root of harmlens' on-disk cache (override with HARMLENS_CACHE)."""
    root = os.environ.get("HARMLENS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "harmlens"
    )
    return Path(root)


def register_model_alias(name: str, resolve: Callable[[str], Path]) -> None:
    """Let `load_model(f"{name}[:variant]")` load `resolve(variant)`; a package registers the models it caches."""
    _ALIASES[name] = resolve


def _alias(name: str) -> Callable[[str], Path] | None:
    if name not in _ALIASES:
        for ep in entry_points(group=ALIAS_GROUP):
            if ep.name == name:
                _ALIASES[name] = ep.load()
    return _ALIASES.get(name)


def resolve_alias(name: str) -> Path | None:
    """The local folder a registered alias 'name[:variant]' stands for, or None when `name` is no alias."""
    head, _, variant = name.partition(":")
    resolve = _alias(head) if head.isidentifier() else None
    if resolve is None:
        return None
    path = Path(resolve(variant))
    if not path.is_dir():
        raise HarmlensError(f"model alias {name!r} points to {path}, which does not exist")
    return path
