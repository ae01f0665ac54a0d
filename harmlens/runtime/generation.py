"""Batched chat generation through the generation seam (probes.engines) and last-token logits, left-padded."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from harmlens.errors import HarmlensError
from harmlens.runtime.activations import pad_batch
from harmlens.runtime.batching import check_batch_size, length_order
from harmlens.runtime.chat import ChatPrompt, chat_format
from harmlens.runtime.compat import ensure_kv_cache_compat
from harmlens.runtime.engines import Backend, HFBackend, get_backend
from harmlens.runtime.engines import pad_id as pad_id  # re-exported (guards import them from here)
from harmlens.runtime.engines import stop_token_ids as stop_token_ids
from harmlens.runtime.loading import model_device

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

_MIN_SHARED_PREFIX = 4  # shorter common prefixes are not worth a separate cached forward


def render(
    model: TransformerBridge, instructions: Sequence[str] | Sequence[ChatPrompt], system: str | None = None
) -> list[ChatPrompt]:
    """Strings -> ChatPrompts through the model's chat template; ChatPrompts pass through unchanged."""
    if isinstance(instructions, str) or not isinstance(instructions, Sequence) or not instructions:
        raise HarmlensError("instructions must be a non-empty list of strings or ChatPrompts")
    if all(isinstance(x, ChatPrompt) for x in instructions):
        if system is not None:
            raise HarmlensError("system= only applies to string instructions, not to already rendered ChatPrompts")
        return [x for x in instructions if isinstance(x, ChatPrompt)]
    if not all(isinstance(x, str) for x in instructions):
        raise HarmlensError("instructions must be all strings or all ChatPrompts, not a mix")
    return chat_format(model, system=system).render_many([x for x in instructions if isinstance(x, str)])


def _check_batch_size(batch_size: int) -> None:
    check_batch_size(batch_size)


def generate_ids(
    model: TransformerBridge,
    prompts: Sequence[ChatPrompt],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    progress: bool = True,
    **hf_kwargs,
) -> list[list[int]]:
    """New token ids per prompt (stop token excluded); greedy unless do_sample; active bridge hooks apply."""
    _check_batch_size(batch_size)
    if not prompts or not all(isinstance(p, ChatPrompt) for p in prompts):
        raise HarmlensError("prompts must be a non-empty list of ChatPrompts (see harmlens.runtime.chat.chat_format)")
    return HFBackend(model).generate_ids(
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        do_sample=do_sample,
        temperature=temperature,
        seed=seed,
        progress=progress,
        **hf_kwargs,
    )


def generate(
    model: TransformerBridge,
    instructions: list[str] | list[ChatPrompt],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    system: str | None = None,
    progress: bool = True,
    backend: str | Backend = "hf",
) -> list[str]:
    """Chat replies (new tokens only, special tokens dropped), batched and left-padded; greedy by default.

    backend='hf' runs the bridged model (hooks apply); 'vllm' serves the same weights through vLLM (no hooks).
    """
    prompts = render(model, instructions, system)
    _check_batch_size(batch_size)
    return get_backend(model, backend).generate(
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        do_sample=do_sample,
        temperature=temperature,
        seed=seed,
        progress=progress,
    )


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
    _check_batch_size(batch_size)
    if not prompts or not all(isinstance(p, ChatPrompt) for p in prompts):
        raise HarmlensError("prompts must be a non-empty list of ChatPrompts (see harmlens.runtime.chat.chat_format)")
    ensure_kv_cache_compat()
    hf, device, pid = model.original_model, model_device(model), pad_id(model.tokenizer)
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
