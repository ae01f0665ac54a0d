"""Next-token logits at each prompt's last token, batched, with a prefix shared by a whole batch run once."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from harmlens.errors import HarmlensError
from harmlens.runtime.activations import pad_batch
from harmlens.runtime.batching import check_batch_size, length_order
from harmlens.runtime.chat import ChatPrompt
from harmlens.runtime.compat import ensure_kv_cache_compat
from harmlens.runtime.hooks import runnable_model
from harmlens.runtime.loading import model_device
from harmlens.runtime.token_prompts import pad_id

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

_MIN_SHARED_PREFIX = 4  # shorter common prefixes are not worth a separate cached forward


def _common_prefix(prompts: Sequence[ChatPrompt]) -> int:
    """Length of the token prefix shared by every prompt, leaving each at least two tokens of its own.

    Two, so the call after the cached prefix still spans several tokens (steer(positions="prompt") tells prefill
    calls from decode steps by their length).
    """
    n = min(len(p) for p in prompts) - 2
    first = prompts[0].input_ids
    for p in prompts[1:]:
        k = 0
        while k < n and p.input_ids[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def cache_kwarg(hf) -> str:
    """Name of the KV-cache argument of the HF forward ('cache' in transformers >= 5.x, else 'past_key_values')."""
    return "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"


def last_token_logits(
    model: TransformerBridge,
    prompts: Sequence[ChatPrompt],
    batch_size: int = 16,
    *,
    share_prefix: bool = True,
    progress: bool = False,
) -> torch.Tensor:
    """Next-token logits at each prompt's last token, [n, vocab] float32 on CPU; active bridge hooks apply.

    With share_prefix, a token prefix common to a whole batch (e.g. the system prompt) runs once and is reused
    through the KV cache: hooks then see that prefix as a separate [1, P] call before the [batch, rest] call.
    """
    check_batch_size(batch_size)
    if not prompts or not all(isinstance(p, ChatPrompt) for p in prompts):
        raise HarmlensError("prompts must be a non-empty list of ChatPrompts (see harmlens.runtime.chat.chat_format)")
    ensure_kv_cache_compat()
    hf, device, pid = runnable_model(model), model_device(model), pad_id(model.tokenizer)
    order = length_order([len(p) for p in prompts])  # less padding per batch
    out = []
    bar = tqdm(total=len(prompts), desc="forward", disable=not progress, unit="prompt")
    for start in range(0, len(prompts), batch_size):
        chunk = [prompts[i] for i in order[start : start + batch_size]]
        n_pre = _common_prefix(chunk) if share_prefix and len(chunk) > 1 else 0
        n_pre = n_pre if n_pre >= _MIN_SHARED_PREFIX else 0
        kwargs = {}
        with torch.no_grad():
            if n_pre:
                pre = torch.tensor([chunk[0].input_ids[:n_pre]], device=device)
                res = hf(input_ids=pre, use_cache=True, logits_to_keep=1)
                cache = res["cache"] if "cache" in res else res["past_key_values"]
                cache.batch_repeat_interleave(len(chunk))
                kwargs[cache_kwarg(hf)] = cache
            rest = [ChatPrompt(p.instruction, p.text, p.input_ids[n_pre:], 0, ()) for p in chunk] if n_pre else chunk
            batch = pad_batch(rest, pid, padding_side="left", device=device)
            mask = torch.cat([torch.ones(len(chunk), n_pre, dtype=torch.long, device=device), batch.attention_mask], 1)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, n_pre:]
            logits = hf(
                input_ids=batch.input_ids,
                attention_mask=mask,
                position_ids=pos,
                logits_to_keep=1,
                use_cache=bool(n_pre),
                **kwargs,
            ).logits
        out.append(logits[:, -1].float().cpu())
        bar.update(len(chunk))
    bar.close()
    logits = torch.cat(out)
    return logits[torch.argsort(torch.tensor(order))]
