"""Activation steering, directional ablation (hook context managers that always unwind) and weight orthogonalisation."""

from __future__ import annotations

import copy
import hashlib
import operator
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from harmlens.errors import HarmlensError
from harmlens.hf import unwrap_model
from harmlens.runtime import PerDevice, add_hooks, is_quantized, n_layers, resid_hook_name
from harmlens.validate import finite

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

POSITIONS = ("all", "prompt")


def check_vector(model: TransformerBridge, vector, what: str = "vector") -> torch.Tensor:
    """A finite float tensor of shape [d_model], detached."""
    d = int(model.cfg.d_model)
    if not isinstance(vector, torch.Tensor):
        raise HarmlensError(f"{what} must be a torch.Tensor of shape [{d}], got {type(vector).__name__}")
    if tuple(vector.shape) != (d,):
        raise HarmlensError(f"{what} has shape {tuple(vector.shape)}, expected [{d}] (d_model)")
    vector = vector.detach()
    if not vector.is_floating_point() or not torch.isfinite(vector).all():
        raise HarmlensError(f"{what} must be a finite floating-point tensor")
    return vector


def unit_direction(model: TransformerBridge, direction) -> torch.Tensor:
    """The direction scaled to unit norm, in float64; HarmlensError if it is zero."""
    direction = check_vector(model, direction, "direction").double()
    norm = direction.norm()
    if not norm > 0:
        raise HarmlensError("direction is the zero vector: cannot ablate or orthogonalise along it")
    return direction / norm


def direction_sha256(model: TransformerBridge, direction) -> str:
    """A short fingerprint of the unit direction (float32 bytes): names an ablation condition in reports and caches."""
    unit = unit_direction(model, direction).float().cpu().contiguous()
    return hashlib.sha256(unit.numpy().tobytes()).hexdigest()[:16]


@contextmanager
def steer(
    model: TransformerBridge, vector: torch.Tensor, layer: int, coeff: float = 1.0, *, positions: str = "all"
) -> Iterator:
    """Add coeff·vector to the residual entering `layer` (n_layers = final residual) while inside the block.

    positions="all" steers every position incl. generated tokens; "prompt" only forward calls over more than one
    token (the prefill), so cached decode steps are left alone.
    """
    if positions not in POSITIONS:
        raise HarmlensError(f"positions must be 'all' or 'prompt', got {positions!r}")
    if isinstance(layer, bool) or not hasattr(layer, "__index__"):
        raise HarmlensError(f"layer must be an integer, got {layer!r}")
    name = resid_hook_name(model, operator.index(layer))
    coeff = finite(coeff, "steering coeff")  # nan/inf would silently empty every reply
    add = PerDevice(check_vector(model, vector).float() * coeff)

    def hook(x: torch.Tensor) -> torch.Tensor | None:
        if positions == "prompt" and x.shape[1] <= 1:
            return None
        return x + add.like(x)

    with add_hooks(model, [(name, hook)]):
        yield model


def ablation_hook_names(model: TransformerBridge) -> list[str]:
    """Arditi's ablation points: hook_resid_pre, hook_attn_out and hook_mlp_out of every block."""
    names = [
        f"blocks.{layer}.{point}"
        for layer in range(n_layers(model))
        for point in ("hook_resid_pre", "hook_attn_out", "hook_mlp_out")
    ]
    missing = [n for n in names if n not in model.hook_dict]
    if missing:
        raise HarmlensError(f"the model has no hook point {missing[0]}: cannot ablate ({len(missing)} missing)")
    return names


@contextmanager
def ablate(model: TransformerBridge, direction: torch.Tensor) -> Iterator:
    """Project the unit direction out of every block's resid_pre, attn_out and mlp_out, at every position."""
    r = PerDevice(unit_direction(model, direction))

    def hook(x: torch.Tensor) -> torch.Tensor:
        xf = x.float() if x.element_size() < 4 else x  # project half-precision activations in float32
        rx = r.like(xf)
        return (xf - (xf @ rx).unsqueeze(-1) * rx).to(x.dtype)

    with add_hooks(model, [(n, hook) for n in ablation_hook_names(model)]):
        yield model


def _base_module(component) -> Any:
    """The HF module a bridge component wraps (or the module itself)."""
    return getattr(component, "original_component", None) or component


def _project_out_(weight: torch.Tensor, r: torch.Tensor, axis: int) -> None:
    """In place: remove the r component along `axis` (the one of size d_model that writes to the residual)."""
    w = weight.detach().double()
    rr = r.double().to(w.device)
    w = w - torch.outer(rr, rr @ w) if axis == 0 else w - torch.outer(w @ rr, rr)
    weight.detach().copy_(w.to(weight.dtype))


def _output_axis(module: torch.nn.Module) -> int:
    """Axis of `module.weight` that indexes the residual: Linear [out, in] -> 0, Conv1D/Embedding -> 1."""
    if isinstance(module, torch.nn.Embedding):
        return 1
    if isinstance(module, torch.nn.Linear):
        return 0
    if type(module).__name__ == "Conv1D":  # GPT-2 style [in, out]
        return 1
    raise HarmlensError(f"cannot orthogonalise a {type(module).__name__}: unknown weight layout")


def _untie_output_embeddings(hf, embed: torch.nn.Module) -> None:
    """Give a tied unembedding its own copy of the weights so editing the embedding leaves the read-out alone."""
    unembed = _base_module(hf.get_output_embeddings())
    if unembed is None or unembed.weight is not embed.weight:
        return
    unembed.weight = torch.nn.Parameter(embed.weight.detach().clone(), requires_grad=embed.weight.requires_grad)
    for cfg in (hf.config, getattr(hf.config, "get_text_config", lambda: None)()):
        if cfg is not None and hasattr(cfg, "tie_word_embeddings"):
            cfg.tie_word_embeddings = False


def _orthogonal_targets(model: TransformerBridge) -> tuple[list[Any], list[int]]:
    """The HF modules that write to the residual (embeddings, every attn/MLP output projection) and the axis of each
    weight that indexes the residual; all checked before anything is edited."""
    if is_quantized(model.original_model):
        raise HarmlensError(
            "cannot orthogonalise quantized weights in place: load the model unquantized (dtype=torch.bfloat16), "
            "orthogonalise and save it, then quantize; ablate() works on a quantized model"
        )
    d = int(model.cfg.d_model)
    targets = [_base_module(model.embed)]
    pos_embed = _base_module(getattr(model, "pos_embed", None))
    if isinstance(pos_embed, torch.nn.Embedding):  # learned absolute positions (GPT-2 style) also write to it
        targets.append(pos_embed)
    try:
        for block in model.blocks:
            targets += [_base_module(block.attn.o), _base_module(block.mlp.out)]
    except AttributeError as exc:
        raise HarmlensError(f"cannot orthogonalise this architecture: no attn.o / mlp.out in a block ({exc})") from None
    axes = [_output_axis(module) for module in targets]
    for module, axis in zip(targets, axes):
        if module.weight.shape[axis] != d:
            raise HarmlensError(f"{type(module).__name__} weight {tuple(module.weight.shape)} has no d_model axis")
    return targets, axes


def orthogonalize(model: TransformerBridge, direction: torch.Tensor):
    """Arditi's permanent edit: W <- W - r̂r̂ᵀW for the embeddings and every attn/MLP output projection (in place).

    A tied unembedding is untied first (cloned) so the logits read-out is unchanged. Equivalent to ablate() for
    architectures whose attention/MLP outputs enter the residual directly (no post-sublayer norm).
    """
    r = unit_direction(model, direction)
    targets, axes = _orthogonal_targets(model)
    _untie_output_embeddings(model.original_model, targets[0])
    model.harmlens_weights_path = None  # the weights on disk no longer match: vLLM must serve a fresh copy
    model.__dict__.pop("_harmlens_vllm", None)
    with torch.no_grad():
        for module, axis in zip(targets, axes):
            _project_out_(module.weight.data, r, axis)
            bias = getattr(module, "bias", None)
            if bias is not None:  # output bias [d_model] writes to the residual too
                _project_out_(bias.data.unsqueeze(1), r, 0)
    return model


def orthogonalized_copy(model: TransformerBridge, direction: torch.Tensor) -> Any:
    """A plain HF model (as unwrap_model gives) with orthogonalize's edit; the bridge and its weights are untouched.

    Only the edited weights (embeddings, output projections, a tied unembedding) are copied; the rest is shared.
    """
    r = unit_direction(model, direction)
    targets, axes = _orthogonal_targets(model)
    hf = unwrap_model(model)
    memo: dict[int, Any] = {id(t): t for t in [*hf.parameters(), *hf.buffers()]}
    clean = copy.deepcopy(hf, memo)  # its own modules and config, the same weight tensors
    _untie_output_embeddings(clean, clean.get_input_embeddings())
    unembed = clean.get_output_embeddings()
    weights = {m: getattr(m, "weight", None) for m in clean.modules() if m is not unembed}
    by_weight = {id(w): m for m, w in weights.items() if isinstance(w, torch.Tensor)}
    with torch.no_grad():
        for target, axis in zip(targets, axes):
            module = by_weight[id(target.weight)]
            for name, rows in (("weight", axis), ("bias", 0)):
                value = getattr(module, name, None)
                if value is None:
                    continue
                edited = value.detach().clone()
                _project_out_(edited if name == "weight" else edited.unsqueeze(1), r, rows)
                setattr(module, name, torch.nn.Parameter(edited, requires_grad=False))
    return clean
