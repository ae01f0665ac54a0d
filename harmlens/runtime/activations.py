"""Cache the residual stream at chosen token positions only, batched, stopping the forward after the last layer read."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from harmlens.errors import HarmlensError
from harmlens.runtime.chat import ChatPrompt
from harmlens.runtime.devices import PerDevice
from harmlens.runtime.loading import model_device

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

PositionSelector = Callable[[ChatPrompt], Sequence[int]]


class _StopForward(Exception):
    """Raised by the last needed hook so no later layer (nor the unembedding) is computed."""


def n_layers(model: TransformerBridge) -> int:
    """Number of transformer blocks."""
    return int(model.cfg.n_layers)


def resid_hook_name(model: TransformerBridge, layer: int) -> str:
    """Hook for the residual stream entering block `layer`; layer == n_layers is the final residual."""
    L = n_layers(model)
    if not 0 <= layer <= L:
        raise HarmlensError(
            f"layer {layer} out of range: the model has layers 0..{L} (resid_pre 0..{L - 1}, {L} = final)"
        )
    return f"blocks.{layer}.hook_resid_pre" if layer < L else "ln_final.hook_in"


def last_hook(names: Sequence[str]) -> str:
    """The hook a forward reaches last among these residual hooks (after it, the forward can stop)."""
    return max(names, key=lambda n: (n.startswith("ln_final"), int(n.split(".")[1]) if n.startswith("blocks") else 0))


def check_layers(model: TransformerBridge, layers: Sequence[int] | None) -> list[int]:
    """Validate a layer list (None = every resid_pre plus the final residual)."""
    L = n_layers(model)
    if layers is None:
        return list(range(L + 1))
    out = [int(x) for x in layers]
    if not out:
        raise HarmlensError("empty layer list")
    for layer in out:
        resid_hook_name(model, layer)
    return out


def t_inst_positions(prompt: ChatPrompt) -> Sequence[int]:
    """Selector: the last instruction token."""
    return (prompt.t_inst,)


def t_post_inst_positions(prompt: ChatPrompt) -> Sequence[int]:
    """Selector: the last prompt token."""
    return (prompt.t_post_inst,)


def last_post_inst_positions(k: int) -> PositionSelector:
    """Selector factory: the last k post-instruction tokens (Arditi's eoi positions)."""

    def select(prompt: ChatPrompt) -> Sequence[int]:
        if len(prompt.post_inst) < k:
            raise HarmlensError(f"prompt has {len(prompt.post_inst)} post-instruction tokens, need {k}")
        return prompt.post_inst[-k:]

    return select


@dataclass(frozen=True)
class Batch:
    """A padded batch of rendered prompts: ids, attention mask, position ids and each row's offset."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    offsets: torch.Tensor  # index of each prompt's first token in its padded row


def pad_batch(prompts: Sequence[ChatPrompt], pad_id: int, *, padding_side: str = "right", device=None) -> Batch:
    """Pad token ids left or right; position ids count real tokens only, so padding never shifts positions."""
    if padding_side not in ("left", "right"):
        raise HarmlensError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    offsets = torch.zeros(len(prompts), dtype=torch.long)
    for row, p in enumerate(prompts):
        start = width - len(p) if padding_side == "left" else 0
        ids[row, start : start + len(p)] = torch.tensor(p.input_ids)
        mask[row, start : start + len(p)] = 1
        offsets[row] = start
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(ids.to(device), mask.to(device), pos.to(device), offsets.to(device))


def iter_resid_batches(
    model: TransformerBridge,
    prompts: Sequence[ChatPrompt],
    select: PositionSelector,
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    padding_side: str = "right",
    progress: bool | str = True,
) -> Iterator[tuple[Sequence[ChatPrompt], torch.Tensor]]:
    """Yield (prompts, acts[batch, n_layers_sel, n_pos, d_model]) for the selected positions, float32 on the model's
    device (callers that need them on the CPU move them, once)."""
    layers = check_layers(model, layers)
    if not prompts:
        raise HarmlensError("empty prompt list")
    pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    names = [resid_hook_name(model, layer) for layer in layers]
    desc = progress if isinstance(progress, str) else "caching activations"
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress, unit="prompt")
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        batch = pad_batch(chunk, pad_id, padding_side=padding_side)
        rel = [list(select(p)) for p in chunk]
        if len({len(r) for r in rel}) != 1:
            raise HarmlensError("position selector returned different numbers of positions within a batch")
        positions = torch.tensor(rel) + batch.offsets[:, None]
        yield chunk, read_at(model, names, positions, batch.input_ids, batch.attention_mask, batch.position_ids)
        bar.update(len(chunk))
    bar.close()


def read_at(
    model: TransformerBridge,
    names: Sequence[str],
    positions: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    *,
    out_device: torch.device | str | None = None,
    **forward_kwargs,
) -> torch.Tensor:
    """Activations [batch, len(names), n_pos, d_model] (float32) at the hooks `names` and padded-row `positions`
    [batch, n_pos] of one forward pass, stopped after the last hook read. Each hook copies only its rows, once, into
    one buffer on the model's device; with `out_device` the whole result moves there once, after the forward."""
    device = model_device(model)
    # Index tensors follow each activation's device (a device_map split puts layers on different devices).
    pos, rows = PerDevice(positions), PerDevice(torch.arange(len(positions))[:, None])
    unique = list(dict.fromkeys(names))
    last = last_hook(unique)
    buffer: list[torch.Tensor] = []  # [batch, len(unique), n_pos, d_model], made by the first hook that runs
    filled: set[int] = set()

    def make_hook(slot: int, name: str):
        def hook(x: torch.Tensor, hook) -> torch.Tensor:
            if not buffer:
                shape = (len(positions), len(unique), positions.shape[1], x.shape[-1])
                buffer.append(torch.empty(shape, dtype=torch.float32, device=device))
            buffer[0][:, slot] = x[rows.on(x.device), pos.on(x.device)].detach()  # one gather, one write (cast/move)
            filled.add(slot)
            if name == last:
                raise _StopForward
            return x

        return hook

    hooks = [(n, make_hook(i, n)) for i, n in enumerate(unique)]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        try:
            model(
                input_ids.to(device),
                attention_mask=attention_mask.to(device),
                position_ids=position_ids.to(device),
                **forward_kwargs,
            )
        except _StopForward:
            pass
    missing = [n for i, n in enumerate(unique) if i not in filled]
    if missing:
        raise HarmlensError(f"the forward pass never reached hook(s) {', '.join(missing)}")
    out = buffer[0]
    if len(unique) != len(names):
        out = out[:, [unique.index(n) for n in names]]
    return out if out_device is None else out.to(out_device)


def cache_resid(
    model: TransformerBridge, prompts: Sequence[ChatPrompt], select: PositionSelector, **kwargs
) -> torch.Tensor:
    """All selected activations at once: [n_prompts, n_layers_sel, n_pos, d_model], float32 on the CPU (small:
    positions only); each batch is copied once, straight into the result."""
    out, start = torch.empty(0), 0
    for chunk, acts in iter_resid_batches(model, prompts, select, **kwargs):
        if not start:
            out = torch.empty((len(prompts), *acts.shape[1:]), dtype=acts.dtype)
        elif acts.shape[1:] != out.shape[1:]:
            raise HarmlensError("position selector returned different numbers of positions in different batches")
        out[start : start + len(chunk)] = acts
        start += len(chunk)
    return out
