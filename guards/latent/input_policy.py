"""What the latent guard does with hostile input: injected role markers and over-long prompts (docs/guard-input-rules.md).

- Injection: a prompt whose text contains role/special-token markers (the model tokenizer's special tokens or other
  families' turn headers, see harmlens.runtime.markers) gets ``injection: true``. The markers are always tokenized as
  plain text (they never become turns). ``on_injection='flag'`` (default) also makes the verdict harmful, whatever
  the score; ``'report'`` only marks it.
- Length: a prompt over ``max_tokens`` tokens (rendered, template included; default 2048) is cut from the left until
  it fits (``truncated: true``, ``on_long='truncate'``, the default) or fails closed with an error
  (``on_long='reject'``). A string over ``MAX_CHARS_PER_TOKEN * max_tokens`` characters is cut (or rejected) before
  tokenization, so one request cannot hold a worker for minutes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from harmlens.errors import HarmlensError
from harmlens.guards.latent.verdict import render_prompt
from harmlens.runtime import ChatFormat, ChatPrompt, find_markers, render_conversation

DEFAULT_MAX_TOKENS = 2048
MAX_CHARS_PER_TOKEN = 32
INJECTION_POLICIES = ("flag", "report")
LONG_POLICIES = ("truncate", "reject")


def check_input_policy(on_injection: str, max_tokens: int | None, on_long: str) -> tuple[str, int | None, str]:
    """Validated (on_injection, max_tokens, on_long); HarmlensError names the bad one."""
    if on_injection not in INJECTION_POLICIES:
        raise HarmlensError(f"on_injection must be one of {', '.join(INJECTION_POLICIES)}, got {on_injection!r}")
    if on_long not in LONG_POLICIES:
        raise HarmlensError(f"on_long must be one of {', '.join(LONG_POLICIES)}, got {on_long!r}")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 8):
        raise HarmlensError(f"max_tokens must be an integer >= 8 (or None for the model's context), got {max_tokens!r}")
    return on_injection, max_tokens, on_long


def check_batch_size(batch_size: object) -> int:
    """A validated prompts-per-forward count (an int ≥ 1); HarmlensError otherwise, before any range() sees it."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise HarmlensError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return batch_size


def token_limit(context: int | None, max_tokens: int | None) -> int | None:
    """The tighter of the model's context and the guard's max_tokens (None: no limit)."""
    limits = [x for x in (context, max_tokens) if x is not None]
    return min(limits) if limits else None


def cap_prompt(prompt: str | ChatPrompt, max_tokens: int | None, on_long: str) -> tuple[str | ChatPrompt, bool]:
    """(prompt, cut): a string far over max_tokens is cut to its last MAX_CHARS_PER_TOKEN * max_tokens characters
    before any tokenization (or rejected with on_long='reject'); a rendered ChatPrompt over max_tokens is rejected."""
    if max_tokens is None:
        return prompt, False
    if isinstance(prompt, ChatPrompt):
        if len(prompt) > max_tokens:
            raise HarmlensError(
                f"pre-rendered prompt is {len(prompt)} tokens, over the guard's max_tokens={max_tokens}"
            )
        return prompt, False
    limit = MAX_CHARS_PER_TOKEN * max_tokens
    if len(prompt) <= limit:
        return prompt, False
    if on_long == "reject":
        raise HarmlensError(f"prompt is {len(prompt)} characters, over the guard's max_tokens={max_tokens}")
    return prompt[-limit:], True


def check_length(rendered: ChatPrompt, max_tokens: int | None, on_long: str) -> None:
    """Reject a rendered prompt over max_tokens when on_long='reject' (truncation happens in render_prompt)."""
    if on_long == "reject" and max_tokens is not None and len(rendered) > max_tokens:
        raise HarmlensError(f"prompt is {len(rendered)} tokens, over the guard's max_tokens={max_tokens}")


def render_within_limits(
    fmt: ChatFormat, prompt: str | ChatPrompt, context: int | None, max_tokens: int | None, on_long: str
) -> tuple[ChatPrompt, bool]:
    """(rendered prompt, truncated) within the model's context and the guard's max_tokens, under `on_long`."""
    text, cut = cap_prompt(prompt, max_tokens, on_long)
    if on_long == "reject" and not isinstance(text, ChatPrompt):
        check_length(dataclasses.replace(fmt, max_length=None).render(text), max_tokens, on_long)
    rendered, truncated = render_prompt(fmt, text, token_limit(context, max_tokens))
    return rendered, truncated or cut


def render_conversation_within(
    fmt: ChatFormat,
    messages,
    system: str | None,
    context: int | None,
    max_tokens: int | None,
    image_text: str | None = None,
    image_at: int | None = None,
) -> ChatPrompt:
    """A conversation rendered whole, never truncated: over the context or max_tokens is an error (a VLM's image
    placeholder `image_text`, when given, counts as its unexpanded tokens)."""
    rendered = render_conversation(
        fmt.tokenizer, messages, system=system, max_length=context, image_text=image_text, image_at=image_at
    )
    if max_tokens is not None and len(rendered) > max_tokens:
        raise HarmlensError(f"conversation is {len(rendered)} tokens, over max_tokens={max_tokens}")
    return rendered


def _contents(content) -> list[str]:
    """The text pieces of one message's content (a string, or OpenAI-style parts with text)."""
    if isinstance(content, str):
        return [content]
    parts = content if isinstance(content, list) else []
    return [p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)]


def mark_injections(guard, prompts: Sequence[str | ChatPrompt], verdicts: list) -> list:
    """Verdicts with injection=True where the prompt's user text carries role markers; harmful too under 'flag'."""
    tok = getattr(guard.model, "tokenizer", None)
    out = []
    for prompt, verdict in zip(prompts, verdicts):
        if isinstance(prompt, ChatPrompt):
            texts = [prompt.instruction]
        elif isinstance(prompt, str):
            texts = [prompt]
        elif isinstance(prompt, (list, tuple)):  # a conversation: every message's text content
            texts = [t for m in prompt if isinstance(m, dict) for t in _contents(m.get("content"))]
        else:  # not a prompt at all: its verdict already failed closed
            texts = []
        if any(find_markers(t, tok) for t in texts):
            flag = guard.on_injection == "flag"
            verdict = dataclasses.replace(verdict, injection=True, harmful=verdict.harmful or flag)
        out.append(verdict)
    return out
