"""harmlens's own hook points as plain PyTorch hooks on a plain HF view of the model, mirrored on the bridge.

Why: a TransformerBridge wraps every HF module in Python components with hook points; measured on an H200 (8B replica)
that costs 35-40% of decoding speed even with no hook set. harmlens itself needs four hook points only (the residual
entering a block, the final residual, attn_out and mlp_out), which plain `register_forward_(pre_)hook`s on the HF
modules give at no per-step cost. So every intervention harmlens installs (steering, ablation, a guard's prefill read)
goes on both: a torch hook on `plain_model(model)` (the HF modules without the bridge, sharing the weights), used by the
engines when no other bridge hook is active, and the same function as a TransformerLens hook on the bridge, so
`model(...)`, `run_with_cache` and user hooks see it too. `foreign_hooks(model)` tells the engines when a user's own
bridge hook is active, in which case they run the bridge instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

import torch

from harmlens.errors import HarmlensError
from harmlens.hf import unwrap_model

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

HookFn = Callable[[torch.Tensor], torch.Tensor | None]  # activation in, replacement (or None: unchanged) out
_PLAIN_ATTR, _MIRROR_ATTR = "_harmlens_plain", "_harmlens_mirrored"
_KINDS = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out")


def _bridge_hf(model: Any) -> Any:
    return getattr(model, "original_model", model)


def plain_model(model: TransformerBridge) -> Any:
    """The HF model without TransformerLens wrappers, sharing the weights; built once, rebuilt if parameters change."""
    hf = _bridge_hf(model)
    key = tuple(id(p) for p in hf.parameters())
    cached = model.__dict__.get(_PLAIN_ATTR)
    if cached is not None and cached[0] == key:
        return cached[1]
    plain = unwrap_model(model)
    model.__dict__[_PLAIN_ATTR] = (key, plain)
    return plain


def forget_plain_model(model: TransformerBridge) -> None:
    """Drop the cached plain view (after an edit that replaces modules or untied weights)."""
    model.__dict__.pop(_PLAIN_ATTR, None)


def _module_path(model: TransformerBridge, component: Any) -> str:
    """The plain-view path of a bridge component (its name in the bridged tree minus the wrapper segments)."""
    for name, module in _bridge_hf(model).named_modules():
        if module is component:
            return name.replace("._original_component", "")
    raise HarmlensError(f"cannot find {type(component).__name__} in the model's module tree")


def _paths(model: TransformerBridge) -> dict[str, tuple[str, str]]:
    """hook name -> (plain module path, 'pre' | 'out'), computed once per model."""
    cached = model.__dict__.get("_harmlens_hook_paths")
    if cached is not None:
        return cached
    out: dict[str, tuple[str, str]] = {}
    for i, block in enumerate(model.blocks):
        out[f"blocks.{i}.hook_resid_pre"] = (_module_path(model, block), "pre")
        out[f"blocks.{i}.hook_attn_out"] = (_module_path(model, block.attn), "out")
        out[f"blocks.{i}.hook_mlp_out"] = (_module_path(model, block.mlp), "out")
    out["ln_final.hook_in"] = (_module_path(model, model.ln_final), "pre")
    model.__dict__["_harmlens_hook_paths"] = out
    return out


def _pre_hook(fn: HookFn) -> Callable:
    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        if "hidden_states" in kwargs:
            new = fn(kwargs["hidden_states"])
            return None if new is None else (args, {**kwargs, "hidden_states": new})
        new = fn(args[0])
        return None if new is None else ((new, *args[1:]), kwargs)

    return hook


def _out_hook(fn: HookFn) -> Callable:
    def hook(module: torch.nn.Module, args: tuple, output: Any) -> Any:
        first = output[0] if isinstance(output, tuple) else output
        new = fn(first)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return hook


def _bridge_hook(fn: HookFn) -> Callable:
    def hook(x: torch.Tensor, hook: Any) -> torch.Tensor:
        new = fn(x)
        return x if new is None else new

    return hook


@contextmanager
def add_hooks(model: TransformerBridge, hooks: Sequence[tuple[str, HookFn]]) -> Iterator[TransformerBridge]:
    """Install `(hook name, fn)` pairs on the plain view (torch hooks) and on the bridge (TL hooks) while inside;
    always removed on exit. Names: blocks.{i}.hook_resid_pre / hook_attn_out / hook_mlp_out, ln_final.hook_in."""
    paths = _paths(model)
    unknown = [name for name, _ in hooks if name not in paths]
    if unknown:
        raise HarmlensError(
            f"unknown hook point {unknown[0]!r}; harmlens hooks {', '.join(_KINDS)} and ln_final.hook_in"
        )
    plain = plain_model(model)
    mirrored: Counter = model.__dict__.setdefault(_MIRROR_ATTR, Counter())
    with ExitStack() as stack:
        for name, fn in hooks:
            path, kind = paths[name]
            module = plain.get_submodule(path)
            if kind == "pre":
                handle = module.register_forward_pre_hook(_pre_hook(fn), with_kwargs=True)
            else:
                handle = module.register_forward_hook(_out_hook(fn))
            stack.callback(handle.remove)
        stack.enter_context(model.hooks(fwd_hooks=[(name, _bridge_hook(fn)) for name, fn in hooks]))
        points = [id(model.hook_dict[name]) for name, _ in hooks]  # aliases (hook_resid_pre = hook_in) share one
        mirrored.update(points)
        stack.callback(mirrored.subtract, points)
        yield model


def foreign_hooks(model: TransformerBridge) -> list[str]:
    """Bridge hook points with hooks that harmlens did not install through add_hooks (a user's own TL hooks)."""
    mirrored: Counter = model.__dict__.get(_MIRROR_ATTR, Counter())
    out, seen = [], set()
    for name, point in (getattr(model, "hook_dict", {}) or {}).items():
        if id(point) in seen:
            continue
        seen.add(id(point))
        if len(point.fwd_hooks) + len(point.bwd_hooks) > mirrored.get(id(point), 0):
            out.append(name)
    return out


def runnable_model(model: Any) -> Any:
    """What a forward or generate call should run: the plain view unless a user's own bridge hook is active (then the
    bridge's HF model, whose wrappers run every hook); a plain HF model as is."""
    if not hasattr(model, "hook_dict") or not hasattr(model, "original_model"):
        return model
    return model.original_model if foreign_hooks(model) else plain_model(model)
