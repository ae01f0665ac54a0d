"""Fast attention for bridged models: the HF module's own SDPA kernel unless a hook reads attention internals.

TransformerLens 4.3 forces eager attention and re-implements it step by step so hook_pattern / hook_attn_scores can
fire. harmlens reads the residual stream, attn_out and mlp_out only, so each attention bridge here calls the wrapped
HF attention module (SDPA) directly, and falls back to TransformerLens' reconstruction for any forward call in which
a hook sits on one of the attention's internal hook points (pattern, scores, rotary q/k, ...). hook_in, hook_out
(= hook_attn_out) and the q/k/v/o projections' hooks fire on both paths.
"""

from __future__ import annotations

from typing import Any

from transformer_lens.hook_points import HookPoint
from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (
    PositionEmbeddingsAttentionBridge,
)

_OUTER = ("hook_in", "hook_out")
_FLAGS = ("use_split_qkv_input", "use_attn_in", "use_attn_result")
_FAST_CLASSES: dict[type, type] = {}


def _internal_hooks(attn: Any) -> list[HookPoint]:
    return [m for n, m in attn._modules.items() if isinstance(m, HookPoint) and n not in _OUTER]


def _fast_forward(self: Any, *args: Any, **kwargs: Any) -> Any:
    """The wrapped HF attention (its configured kernel) with hook_in/hook_out, unless an internal hook is active."""
    parent: Any = type(self).__mro__[1]
    slow = parent.forward
    if any(h.has_hooks() for h in self._harmlens_internal) or any(getattr(self.config, f, False) for f in _FLAGS):
        return slow(self, *args, **kwargs)
    if "hidden_states" in kwargs:
        kwargs["hidden_states"] = self.hook_in(kwargs["hidden_states"])
    else:
        args = (self.hook_in(args[0]), *args[1:])
    out = self.original_component(*args, **kwargs)
    return (self.hook_out(out[0]), *out[1:])


def _fast_class(cls: type) -> type:
    if cls not in _FAST_CLASSES:
        _FAST_CLASSES[cls] = type(f"Fast{cls.__name__}", (cls,), {"forward": _fast_forward})
    return _FAST_CLASSES[cls]


def _eligible(attn: Any) -> bool:
    """Attention whose HF module takes the bridge's arguments as is and whose SDPA path computes the same thing."""
    hf_attn = attn._modules.get("_original_component")
    if type(attn) not in (PositionEmbeddingsAttentionBridge, _FAST_CLASSES.get(PositionEmbeddingsAttentionBridge)):
        return False
    if hf_attn is None:
        return False
    cfg = getattr(hf_attn, "config", None)
    # Softcapping and attention sinks are eager-only in HF; keep TransformerLens' reconstruction there.
    return getattr(cfg, "attn_logit_softcapping", None) is None and getattr(hf_attn, "sinks", None) is None


def enable_fast_attention(model: Any, enabled: bool = True) -> int:
    """Switch a bridge to SDPA attention with eager fallback per call (enabled=False restores eager); idempotent.

    Returns the number of attention layers on the fast path (0 when the architecture is not covered).
    """
    hf = getattr(model, "original_model", None)
    layers = [m for m in model.modules() if isinstance(m, PositionEmbeddingsAttentionBridge)]
    if not enabled:
        for attn in layers:
            if type(attn) in _FAST_CLASSES.values():
                attn.__class__ = type(attn).__mro__[1]
        if hf is not None and hasattr(hf, "set_attn_implementation"):
            hf.set_attn_implementation("eager")
        model.harmlens_fast_attention = 0
        return 0
    todo = [m for m in layers if _eligible(m)]
    if hf is None or not todo or len(todo) != len(layers):
        model.harmlens_fast_attention = 0
        return 0
    try:
        hf.set_attn_implementation("sdpa")
    except Exception:  # noqa: BLE001 - a model without SDPA support stays eager
        model.harmlens_fast_attention = 0
        return 0
    for attn in todo:
        if type(attn) not in _FAST_CLASSES.values():
            object.__setattr__(attn, "_harmlens_internal", _internal_hooks(attn))
            attn.__class__ = _fast_class(type(attn))
    model.harmlens_fast_attention = len(todo)
    return len(todo)
