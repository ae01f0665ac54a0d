"""Whole-batch generation for what the step loop cannot run: image prompts (a VLM), the vLLM-guarded model, and models
whose KV cache is not a plain full-attention DynamicCache. One generate call per group; the reply is sent when done."""

from __future__ import annotations

from typing import Any

from harmlens.errors import HarmlensError
from harmlens.guards.latent.images import ImagePrompt, image_prompt
from harmlens.guards.serve.schemas import RequestError
from harmlens.guards.serve.streams import Reply
from harmlens.runtime import ChatPrompt, GenerationConfig, HFBackend


def static_chat(guarded: Any, use_guard: bool, group: list, options: tuple) -> list[Any]:
    """Replies (or RequestErrors) for jobs with equal options (max_tokens, temperature, seed, top_p); rendering runs
    on this thread (the tokenizer is not thread-safe), image and text prompts go in separate batches."""
    max_tokens, temperature, seed, top_p = options
    guard, tok = guarded.guard, guarded.model.tokenizer
    out: list[Any] = [None] * len(group)
    ready: list[tuple[int, ChatPrompt | ImagePrompt]] = []
    for i, job in enumerate(group):
        try:
            if job.image is None:
                ready.append((i, guard.prepare(job.items[0])[0]))
            else:
                at, image = job.image
                ready.append((i, image_prompt(guard, job.items[0], image, processor(guarded), at=at)))
        except HarmlensError as exc:  # e.g. longer than the context: the client's fault
            out[i] = RequestError(400, str(exc), param="messages")
    if not ready:
        return out
    prompts = [p for _, p in ready]
    config = GenerationConfig(
        max_new_tokens=max_tokens,
        batch_size=len(prompts),
        do_sample=temperature > 0,
        temperature=temperature or 1.0,
        top_p=top_p,
        seed=seed,
        progress=False,  # a server: no bars
    )
    if use_guard:
        replies = guarded.generate(prompts, config)
        for (i, prompt), reply in zip(ready, replies):
            n_new = 0 if reply.blocked else len(tok(reply.text, add_special_tokens=False)["input_ids"])
            finish = "content_filter" if reply.blocked else finish_reason(n_new, max_tokens)
            out[i] = Reply(reply.text, reply.verdict, reply.blocked, prompt_length(prompt), n_new, finish)
        return out
    for (i, prompt), new in zip(ready, plain(guarded, prompts, config)):
        text = tok.decode(new, skip_special_tokens=True)
        out[i] = Reply(text, None, False, prompt_length(prompt), len(new), finish_reason(len(new), max_tokens))
    return out


def processor(guarded: Any) -> Any:
    """The VLM's processor, else None."""
    return getattr(guarded, "processor", None)


def plain(guarded: Any, prompts: list, config: GenerationConfig) -> list[list[int]]:
    """The unguarded baseline: the same rendering, plain generation (image prompts with the processor)."""
    backend = getattr(guarded, "backend", None)  # the vLLM guard's engine serves the baseline too
    if backend is not None:
        return backend.generate_ids(prompts, config)
    out: list[list[int]] = [[] for _ in prompts]
    for images in (False, True):
        idx = [j for j, p in enumerate(prompts) if isinstance(p, ImagePrompt) == images]
        if not idx:
            continue
        group = config.replace(batch_size=len(idx))
        if images:
            hf = HFBackend(guarded.model, processor(guarded))
            pics = [prompts[j].image for j in idx]
            ids = hf.generate_ids([prompts[j].prompt for j in idx], group, images=pics)
        else:
            ids = HFBackend(guarded.model).generate_ids([prompts[j] for j in idx], group)
        for j, new in zip(idx, ids):
            out[j] = new
    return out


def prompt_length(prompt: ChatPrompt | ImagePrompt) -> int:
    """Prompt tokens for usage: an image counts as its placeholder token(s), not the tokens it expands to."""
    return len(prompt.prompt if isinstance(prompt, ImagePrompt) else prompt)


def finish_reason(n_new: int, max_tokens: int) -> str:
    """'length' when the reply used all of max_tokens, else 'stop'."""
    return "length" if n_new >= max_tokens else "stop"
