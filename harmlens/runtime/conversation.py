"""Render OpenAI-style conversations through a model's own chat template as a ChatPrompt (t_inst = the last user turn).

Message contents are never template structure: the template is rendered around placeholders, its own special tokens
are kept as special tokens, and every run of text (template text and message contents) is tokenized with
`split_special_tokens=True`, so a special-token string typed by a user stays plain text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, cast

from harmlens.errors import HarmlensError
from harmlens.runtime.chat import ChatPrompt

ROLES = ("system", "user", "assistant")
_MARK = "\ue000HARMLENS_MESSAGE_{}\ue001"
_MARK_RE = re.compile("\ue000HARMLENS_MESSAGE_(\\d+)\ue001")


def is_conversation(obj: object) -> bool:
    """True for a non-empty list/tuple of mappings (one OpenAI-style message list)."""
    return isinstance(obj, (list, tuple)) and bool(obj) and all(isinstance(m, Mapping) for m in obj)


def message_text(content: Any, role: str = "user") -> str:
    """A message's text: a string, or OpenAI content parts of type 'text' joined by newlines (images refused)."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind in ("image_url", "input_image", "image"):
                raise HarmlensError(f"{role} message has an image, but this is a text model")
            else:
                raise HarmlensError(f"{role} message has a content part of unsupported type {kind!r}")
        return "\n".join(texts)
    raise HarmlensError(f"{role} message content must be a string or a list of text parts")


def clean_messages(messages: object) -> list[dict[str, str]]:
    """Validated copies {role, content} (content stripped): known roles, no empty content, ending in a user turn."""
    if not is_conversation(messages):
        raise HarmlensError("a conversation must be a non-empty list of {'role': ..., 'content': ...} messages")
    out = []
    for i, message in enumerate(cast(Sequence[Mapping[str, Any]], messages)):
        role = str(message.get("role"))
        if role not in ROLES:
            raise HarmlensError(f"message {i} has unknown role {role!r}; use one of {', '.join(ROLES)}")
        if message.get("content") is None:
            raise HarmlensError(f"message {i} ({role}) has no content")
        text = message_text(message["content"], role).strip()
        if not text:
            raise HarmlensError(f"message {i} ({role}) has empty content")
        out.append({"role": role, "content": text})
    if out[-1]["role"] != "user":
        raise HarmlensError("the conversation must end with a user message")
    return out


def _special_pattern(tokenizer) -> re.Pattern | None:
    """Alternation of the tokenizer's added-token strings, longest first."""
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    strings = {str(getattr(t, "content", t)) for t in decoder.values()}
    strings |= {str(t) for t in getattr(tokenizer, "all_special_tokens", []) or []}
    strings.discard("")
    if not strings:
        return None
    return re.compile("|".join(re.escape(s) for s in sorted(strings, key=len, reverse=True)))


def _pieces(rendered: str, contents: list[str], pattern: re.Pattern | None) -> tuple[list[tuple[str, bool]], list]:
    """Split the rendered template into (text, is_special) pieces with contents substituted; also the character span
    of every content occurrence as (message index, start, end) in the final text."""
    pieces: list[tuple[str, bool]] = []
    spans, pos, end = [], 0, 0

    def add_template(text: str) -> None:
        nonlocal end
        last = 0
        for m in pattern.finditer(text) if pattern else ():
            pieces.append((text[last : m.start()], False))
            pieces.append((m.group(), True))
            last = m.end()
        pieces.append((text[last:], False))
        end += len(text)

    for m in _MARK_RE.finditer(rendered):
        add_template(rendered[pos : m.start()])
        index = int(m.group(1))
        spans.append((index, end, end + len(contents[index])))
        pieces.append((contents[index], False))
        end += len(contents[index])
        pos = m.end()
    add_template(rendered[pos:])
    return [p for p in pieces if p[0]], spans


def _tokenize(tokenizer, pieces: list[tuple[str, bool]]) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and absolute character offsets: special pieces as one token, text runs with split_special_tokens."""
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    start, run, run_start = 0, "", 0

    def flush() -> None:
        if run:
            enc = tokenizer(run, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
            ids.extend(enc["input_ids"])
            offsets.extend((run_start + a, run_start + b) for a, b in enc["offset_mapping"])

    for text, special in pieces:
        if special:
            flush()
            run, run_start = "", start + len(text)
            ids.append(int(tokenizer.convert_tokens_to_ids(text)))
            offsets.append((start, start + len(text)))
        else:
            run += text
        start += len(text)
    flush()
    return ids, offsets


def _render_marked(tokenizer, template: str, clean: list[dict[str, str]], last: int) -> str:
    """The template's rendering with a placeholder for each content: string contents first, then the list-of-parts
    contents VLM templates (LLaVA-1.5) expect when the strings drop the last user message."""
    first: Exception | None = None
    plain: str | None = None
    for structured in (False, True):
        marked = [
            {
                "role": m["role"],
                "content": [{"type": "text", "text": _MARK.format(i)}] if structured else _MARK.format(i),
            }
            for i, m in enumerate(clean)
        ]
        try:
            rendered = tokenizer.apply_chat_template(
                marked, chat_template=template, tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:  # jinja raise_exception(): e.g. roles that must alternate
            first = first or exc
            continue
        if _MARK.format(last) in rendered:
            return rendered
        plain = plain if plain is not None else rendered
    if plain is not None:
        return plain  # the caller says the template drops the last user message
    error = cast(Exception, first)
    msg = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise HarmlensError(f"the chat template refuses this conversation: {msg}")


def render_conversation(
    tokenizer,
    messages: object,
    *,
    system: str | None = None,
    chat_template: str | None = None,
    max_length: int | None = None,
    image_text: str | None = None,
    image_at: int | None = None,
) -> ChatPrompt:
    """A ChatPrompt for a message list: t_inst = the last token of the last user message, span_start = the first token
    after the previous message (0 when only system messages precede it); `system` is added when none is given.
    `image_text` (a VLM's image placeholder, e.g. '<image>\n') is put as template structure at the start of user
    message `image_at` (default the last user message), where an image part renders (RMA's img_in)."""
    clean = clean_messages(messages)
    at = image_at if image_at is not None else max(i for i, m in enumerate(clean) if m["role"] == "user")
    if image_text is not None and not (0 <= at < len(clean) and clean[at]["role"] == "user"):
        raise HarmlensError(f"message {at} cannot carry an image: only a user message can")
    if system is not None and clean[0]["role"] != "system":
        clean.insert(0, {"role": "system", "content": system})
        at += 1
    template = chat_template if chat_template is not None else getattr(tokenizer, "chat_template", None)
    if not template:
        raise HarmlensError("the tokenizer has no chat template; pass chat_template=... (a Jinja string)")
    last = max(i for i, m in enumerate(clean) if m["role"] == "user")
    rendered = _render_marked(tokenizer, template, clean, last)
    if image_text is not None:
        if rendered.count(_MARK.format(at)) != 1:
            raise HarmlensError("the chat template drops or repeats the message with the image")
        rendered = rendered.replace(_MARK.format(at), image_text + _MARK.format(at))
    contents = [m["content"] for m in clean]
    pieces, spans = _pieces(rendered, contents, _special_pattern(tokenizer))
    ends = [end for index, _, end in spans if index == last]
    if not ends:
        raise HarmlensError("the chat template drops the last user message")
    text = "".join(p for p, _ in pieces)
    ids, offsets = _tokenize(tokenizer, pieces)
    t_inst = max(i for i, (a, b) in enumerate(offsets) if a < ends[-1] and b > a)
    if t_inst >= len(ids) - 1:
        raise HarmlensError("tokenization leaves no post-instruction token after the last user message")
    before = [end for index, _, end in spans if index < last and clean[index]["role"] != "system"]
    span_start = 0
    if before:
        span_start = min((i for i, (a, b) in enumerate(offsets) if b > max(before) and b > a), default=0)
    if max_length is not None and len(ids) > max_length:
        raise HarmlensError(f"conversation is {len(ids)} tokens, longer than the model's context of {max_length}")
    post = tuple(range(t_inst + 1, len(ids)))
    return ChatPrompt(clean[last]["content"], text, tuple(ids), t_inst, post, span_start=min(span_start, t_inst))
