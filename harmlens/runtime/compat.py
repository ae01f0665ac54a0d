"""Compatibility shims for the pinned TransformerLens, applied explicitly by the code that needs them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def ensure_kv_cache_compat() -> None:
    """Make TL 4.3's attention read transformers 5's `cache=` kwarg, else cached decoding is wrong; idempotent.

    Why: TransformerLens 4.3's AttentionBridge only looks for `past_key_values`/`layer_past`, while transformers >= 5
    passes the KV cache as `cache=`. Remove once TransformerLens reads `cache=` itself (checked against 4.3.0).
    """
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    original = AttentionBridge._update_kv_cache
    if getattr(original, "_harmlens_compat", False):
        return

    def _update_kv_cache(self: Any, k: Any, v: Any, **kwargs: Any) -> Any:
        if kwargs.get("past_key_values") is None and kwargs.get("layer_past") is None:
            if kwargs.get("cache") is not None:
                kwargs["past_key_values"] = kwargs["cache"]
        return original(self, k, v, **kwargs)

    _update_kv_cache._harmlens_compat = True  # type: ignore[attr-defined]
    AttentionBridge._update_kv_cache = _update_kv_cache  # type: ignore[method-assign]


@contextmanager
def no_torchvision_install() -> Iterator[None]:
    """While booting a bridge, stop TransformerLens from pip-installing torchvision into the user's environment.

    Why: TL 4.3 runs `pip install torchvision` when a VLM's processor needs it and it is missing; that can replace the
    user's torch with another build (it did here: a CUDA torch over the CPU one). harmlens loads processors itself, so
    TL's processor load may fail quietly instead. Remove once TL no longer installs packages (checked against 4.3.0).
    """
    from transformer_lens.model_bridge.sources.transformers import helpers

    saved = helpers._ensure_torchvision
    helpers._ensure_torchvision = lambda: False
    try:
        yield
    finally:
        helpers._ensure_torchvision = saved
