"""Read the residual stream at each prompt's own positions, running a token prefix shared by several prompts once.

Why: a jailbreak template wraps many requests in the same long text, so prompts built from it share every token
before the request. Activations there depend only on those tokens, so the prefix runs once and its KV cache serves
every prompt's remainder. Same maths as reading each prompt whole; far fewer tokens (the span guard's fit).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from harmlens.errors import HarmlensError
from harmlens.runtime.activations import check_layers, read_at, resid_hook_name
from harmlens.runtime.chat import ChatPrompt

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

KV = list[tuple[torch.Tensor, torch.Tensor]]


def prefix_groups(prompts: Sequence[ChatPrompt], min_prefix: int) -> list[tuple[int, list[int]]]:
    """(shared prefix length, prompt indices): prompts that agree on `min_prefix` tokens past what every prompt shares
    (a default system turn) form a group with their longest common prefix (each keeps at least one token of its own);
    prompts too short for that share the common prefix when it has `min_prefix` tokens; every other prompt is a group
    of one with 0."""
    key_end = _common_length([p.input_ids for p in prompts]) + min_prefix if prompts else min_prefix
    by_start: dict[tuple[int, ...], list[int]] = defaultdict(list)
    short: list[int] = []
    for i, p in enumerate(prompts):
        (by_start[tuple(p.input_ids[:key_end])] if len(p) > key_end else short).append(i)
    common = _common_length([prompts[i].input_ids for i in short]) if len(short) > 1 else 0
    groups = [(common, short)] if common >= min_prefix else [(0, [i]) for i in short]
    for idx in by_start.values():
        if len(idx) < 2:
            groups.append((0, idx))
            continue
        groups.append((_common_length([prompts[i].input_ids for i in idx]), idx))
    return groups


def _common_length(ids: Sequence[Sequence[int]]) -> int:
    """Length of the longest common token prefix, leaving every sequence at least one token of its own."""
    limit = min(len(x) for x in ids) - 1
    for j in range(limit):
        if any(x[j] != ids[0][j] for x in ids):
            return j
    return max(limit, 0)


def read_positions(
    model: TransformerBridge,
    prompts: Sequence[ChatPrompt],
    positions: Sequence[Sequence[int]],
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    min_prefix: int = 32,
    progress: bool | str = False,
) -> list[torch.Tensor]:
    """Activations [n_layers, len(positions[i]), d_model] (float32, CPU) of prompts[i] at positions[i]; prompts that
    share at least `min_prefix` leading tokens run their common prefix once (see the module docstring)."""
    if len(prompts) != len(positions):
        raise HarmlensError(f"{len(prompts)} prompts but {len(positions)} position lists")
    for p, pos in zip(prompts, positions):
        if not pos or min(pos) < 0 or max(pos) >= len(p):
            raise HarmlensError(f"positions {list(pos)[:8]} do not fit a prompt of {len(p)} tokens")
    reader = _Reader(model, check_layers(model, layers))
    out: list[torch.Tensor | None] = [None] * len(prompts)
    bar = tqdm(total=len(prompts), desc=progress if isinstance(progress, str) else "reading", disable=not progress)
    alone: list[int] = []  # prompts read whole, batched together by length
    for shared, idx in prefix_groups(prompts, min_prefix):
        if not shared:
            alone += idx
            continue
        first = prompts[idx[0]].input_ids[:shared]
        wanted = sorted({j for i in idx for j in positions[i] if j < shared}) or [0]
        acts, kv = reader.run([list(first)], [wanted], keep_cache=True)
        if kv is None:  # a cache that is not plain keys/values (e.g. linear attention): read these prompts whole
            alone += idx
            continue
        head = dict(zip(wanted, acts[0].unbind(1)))
        _read_tails(reader, prompts, positions, idx, out, bar, batch_size, shared, kv, head)
    _read_tails(reader, prompts, positions, alone, out, bar, batch_size)
    bar.close()
    return [a for a in out if a is not None]


def _read_tails(
    reader: _Reader,
    prompts: Sequence[ChatPrompt],
    positions: Sequence[Sequence[int]],
    idx: list[int],
    out: list,
    bar,
    batch_size: int,
    shared: int = 0,
    kv: KV | None = None,
    head: dict | None = None,
) -> None:
    """Read prompts idx from token `shared` on (after the cached prefix kv), in length-sorted batches, into out."""
    head = head or {}
    order = sorted(idx, key=lambda i: len(prompts[i]))
    for s in range(0, len(order), batch_size):
        chunk = order[s : s + batch_size]
        tails = [[j for j in positions[i] if j >= shared] or [shared] for i in chunk]
        rows = [list(prompts[i].input_ids[shared:]) for i in chunk]
        acts, _ = reader.run(rows, [[j - shared for j in t] for t in tails], prefix=kv, start=shared)
        for i, tail, a in zip(chunk, tails, acts):
            at = dict(zip(tail, a.unbind(1)))
            out[i] = torch.stack([head[j] if j < shared else at[j] for j in positions[i]], dim=1)
        bar.update(len(chunk))


class _Reader:
    """One model's hooks at the chosen layers: right-padded forwards, optionally after a cached prefix."""

    def __init__(self, model: TransformerBridge, layers: list[int]) -> None:
        self.model = model
        self.names = [resid_hook_name(model, layer) for layer in layers]
        tok = model.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

    def run(
        self,
        rows: list[list[int]],
        wanted: list[list[int]],
        *,
        prefix: KV | None = None,
        start: int = 0,
        keep_cache: bool = False,
    ) -> tuple[list[torch.Tensor], KV | None]:
        """Per row [n_layers, len(wanted[row]), d] on the CPU; with keep_cache (one row, no prefix) its KV cache too."""
        from transformers import DynamicCache

        n, width = len(rows), max(len(r) for r in rows)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, start + width), dtype=torch.long)
        mask[:, :start] = 1
        for b, r in enumerate(rows):
            ids[b, : len(r)] = torch.tensor(r)
            mask[b, start : start + len(r)] = 1
        k = max(len(w) for w in wanted)
        positions = torch.tensor([w + [w[-1]] * (k - len(w)) for w in wanted])
        cache = None
        if prefix is not None:
            cache = DynamicCache()
            for layer, (key, value) in enumerate(prefix):
                cache.update(key.expand(n, *key.shape[1:]), value.expand(n, *value.shape[1:]), layer)
        elif keep_cache:
            cache = DynamicCache()
        extra = {"past_key_values": cache, "use_cache": True} if cache is not None else {}
        position_ids = (start + torch.arange(width))[None].expand(n, -1)
        # Callers fit on the CPU: each batch's rows move there once, after the forward.
        acts = read_at(self.model, self.names, positions, ids, mask, position_ids, out_device="cpu", **extra)
        kv = _plain_kv(cache) if keep_cache else None
        return [acts[b, :, : len(w)] for b, w in enumerate(wanted)], kv


def _plain_kv(cache) -> KV | None:
    """The cache's (keys, values) per layer, or None when some layer keeps other state (it cannot be broadcast)."""
    layers = getattr(cache, "layers", None) or []
    kv = [(getattr(layer, "keys", None), getattr(layer, "values", None)) for layer in layers]
    if not kv or not all(isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor) for k, v in kv):
        return None
    return kv  # type: ignore[return-value]  # checked above
