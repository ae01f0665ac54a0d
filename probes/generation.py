"""Batched chat generation (HF generate with KV cache, so bridge hooks fire) and last-token logits, left-padded."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from harmlens.compat import ensure_kv_cache_compat
from harmlens.errors import HarmlensError
from harmlens.probes.activations import pad_batch
from harmlens.probes.chat import ChatPrompt, chat_format
from harmlens.probes.loading import model_device

_MIN_SHARED_PREFIX = 4  # shorter common prefixes are not worth a separate cached forward


def pad_id(tokenizer) -> int:
    """The tokenizer's pad id, else its eos id, else 0."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def stop_token_ids(model) -> list[int]:
    """Tokens that end a reply: tokenizer eos, generation-config eos and the chat template's end-of-turn token."""
    tok = model.tokenizer
    ids: list[int] = []
    gen_cfg = getattr(getattr(model, "original_model", None), "generation_config", None)
    for value in (tok.eos_token_id, getattr(gen_cfg, "eos_token_id", None)):
        ids += [value] if isinstance(value, int) else list(value or [])
    marker = "\ue000HARMLENS_REPLY\ue001"
    try:
        text = tok.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}], tokenize=False
        )
    except Exception:  # templates that cannot render an assistant turn: eos only
        text = ""
    if marker in text:
        special = set(tok.all_special_ids) | set(getattr(tok, "added_tokens_decoder", {}) or {})
        tail = tok(text.split(marker, 1)[1], add_special_tokens=False)["input_ids"][:4]
        ids += [t for t in tail if t in special][:1]
    return list(dict.fromkeys(int(t) for t in ids))


def render(model, instructions: Sequence[str] | Sequence[ChatPrompt], system: str | None = None) -> list[ChatPrompt]:
    """Strings -> ChatPrompts through the model's chat template; ChatPrompts pass through unchanged."""
    if isinstance(instructions, str) or not isinstance(instructions, Sequence) or not instructions:
        raise HarmlensError("instructions must be a non-empty list of strings or ChatPrompts")
    if all(isinstance(x, ChatPrompt) for x in instructions):
        if system is not None:
            raise HarmlensError("system= only applies to string instructions, not to already rendered ChatPrompts")
        return list(instructions)
    if not all(isinstance(x, str) for x in instructions):
        raise HarmlensError("instructions must be all strings or all ChatPrompts, not a mix")
    return chat_format(model, system=system).render_many(list(instructions))


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise HarmlensError(f"batch_size must be a positive integer, got {batch_size!r}")


def generate_ids(
    model,
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
        raise HarmlensError("prompts must be a non-empty list of ChatPrompts (see harmlens.probes.chat.chat_format)")
    if max_new_tokens < 1:
        raise HarmlensError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if do_sample and not temperature > 0:
        raise HarmlensError(f"temperature must be positive when sampling, got {temperature}")
    ensure_kv_cache_compat()
    hf, device = model.original_model, model_device(model)
    stops, pid = stop_token_ids(model), pad_id(model.tokenizer)
    kwargs = dict(
        max_new_tokens=max_new_tokens, do_sample=do_sample, eos_token_id=stops, pad_token_id=pid, use_cache=True
    )
    kwargs.update(dict(temperature=temperature) if do_sample else dict(temperature=None, top_p=None, top_k=None))
    kwargs.update(hf_kwargs)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
    out: list[list[int]] = [[] for _ in prompts]
    bar = tqdm(total=len(prompts), desc="generating", disable=not progress, unit="prompt")
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = pad_batch([prompts[i] for i in idx], pid, padding_side="left", device=device)
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed + start)
            seqs = hf.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **kwargs)
        for row, i in enumerate(idx):
            new = seqs[row, batch.input_ids.shape[1] :].tolist()
            cut = next((j for j, t in enumerate(new) if t in stops), len(new))
            out[i] = new[:cut]
        bar.update(len(idx))
    bar.close()
    return out


def generate(
    model,
    instructions: list[str] | list[ChatPrompt],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    system: str | None = None,
    progress: bool = True,
) -> list[str]:
    """Chat replies (new tokens only, special tokens dropped), batched and left-padded; greedy by default."""
    prompts = render(model, instructions, system)
    ids = generate_ids(
        model,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        do_sample=do_sample,
        temperature=temperature,
        seed=seed,
        progress=progress,
    )
    return [model.tokenizer.decode(t, skip_special_tokens=True) for t in ids]


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


def _cache_kwarg(hf) -> str:
    """Name of the KV-cache argument of the HF forward ('cache' in transformers >= 5.x, else 'past_key_values')."""
    return "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"


def last_token_logits(
    model, prompts: Sequence[ChatPrompt], batch_size: int = 16, *, share_prefix: bool = True, progress: bool = False
) -> torch.Tensor:
    """Next-token logits at each prompt's last token, [n, vocab] float32 on CPU; active bridge hooks apply.

    With share_prefix, a token prefix common to a whole batch (e.g. the system prompt) runs once and is reused
    through the KV cache: hooks then see that prefix as a separate [1, P] call before the [batch, rest] call.
    """
    _check_batch_size(batch_size)
    if not prompts or not all(isinstance(p, ChatPrompt) for p in prompts):
        raise HarmlensError("prompts must be a non-empty list of ChatPrompts (see harmlens.probes.chat.chat_format)")
    ensure_kv_cache_compat()
    hf, device, pid = model.original_model, model_device(model), pad_id(model.tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # less padding per batch
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
                kwargs[_cache_kwarg(hf)] = cache
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
