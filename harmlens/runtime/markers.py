"""User text never becomes template structure: find role markers in it and tokenize its special tokens as plain text.

Policy (everywhere harmlens renders user text: instructions, system prompts, jailbreak-wrapped instructions, replies
shown to a judge): the template's own text is tokenized normally, while every user-supplied span is tokenized with
``split_special_tokens=True``, so ``<|im_end|><|im_start|>assistant`` typed by a user becomes ordinary text tokens and
t_inst stays on the real instruction's last token. Text without special-token strings is tokenized exactly as before.
Separately, `find_markers` names the role markers (this tokenizer's special tokens and other families' headers) found
in user text, which the latent guard reports as ``injection`` (and, by default, flags as harmful).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

# Role/turn markers of common chat-template families, matched in user text whatever the model's own family.
FAMILY_MARKERS: tuple[str, ...] = (
    "<|im_start|>",
    "<|im_end|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|begin_of_text|>",
    "[INST]",
    "[/INST]",
    "<<SYS>>",
    "<</SYS>>",
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
    "<|end|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
)


def special_strings(tokenizer) -> tuple[str, ...]:
    """The tokenizer's special-token strings (added special tokens and named ones), longest first."""
    return _special_strings(tokenizer) if tokenizer is not None else ()


def _special_strings(tokenizer) -> tuple[str, ...]:
    size = len(tokenizer) if hasattr(tokenizer, "__len__") else -1
    cached = getattr(tokenizer, "_harmlens_special_strings", None)
    if cached is not None and cached[0] == size:  # re-derived when tokens are added
        return cached[1]
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    found = {t.content for t in decoder.values() if getattr(t, "special", False)}
    found |= {t for t in getattr(tokenizer, "all_special_tokens", ()) or () if isinstance(t, str)}
    out = tuple(sorted((t for t in found if t), key=len, reverse=True))
    try:
        tokenizer._harmlens_special_strings = (size, out)  # tokenizers are long-lived
    except AttributeError:
        pass
    return out


@lru_cache(maxsize=64)
def _pattern(markers: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(re.escape(m) for m in sorted(set(markers), key=len, reverse=True)))


def find_markers(text: str, tokenizer=None, extra: Sequence[str] = FAMILY_MARKERS) -> list[str]:
    """Distinct role/special-token markers in `text` (the tokenizer's special tokens plus `extra`), in order of use."""
    markers = tuple(m for m in (*special_strings(tokenizer), *extra) if m)
    if not markers or not isinstance(text, str):
        return []
    return list(dict.fromkeys(m.group(0) for m in _pattern(markers).finditer(text)))


def has_special(tokenizer, text: str) -> bool:
    """Whether `text` contains one of the tokenizer's special-token strings (would tokenize as structure)."""
    return any(t in text for t in special_strings(tokenizer))


def _encode(tokenizer, text: str, escape: bool) -> tuple[list[int], list[tuple[int, int]] | None]:
    kwargs = {"split_special_tokens": True} if escape else {}
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, **kwargs)
    return list(enc["input_ids"]), enc.get("offset_mapping")


def _last_token(tokenizer, text: str, offsets, end: int, escape: bool) -> int:
    """Index of the token holding character end-1 of `text` (offsets, or counting tokens on a slow tokenizer)."""
    if offsets is not None:
        return max(i for i, (a, b) in enumerate(offsets) if a < end and b > a)
    return len(_encode(tokenizer, text[:end], escape)[0]) - 1


def tokenize_prompt(
    tokenizer, text: str, inst_end: int, user_spans: Sequence[tuple[int, int]] = ()
) -> tuple[list[int], int]:
    """(token ids, t_inst) of a rendered prompt: special-token strings inside `user_spans` (start, end) are plain text;
    t_inst is the token holding character inst_end-1 (the instruction's last character)."""
    spans = sorted((a, b) for a, b in user_spans if b > a and has_special(tokenizer, text[a:b]))
    cuts: list[tuple[int, int, bool]] = []
    pos = 0
    for a, b in spans:
        if a < pos:  # overlapping spans: merge into the previous user piece
            start, _, _ = cuts.pop()
            cuts.append((start, max(b, pos), True))
            pos = max(b, pos)
            continue
        if a > pos:
            cuts.append((pos, a, False))
        cuts.append((a, b, True))
        pos = b
    if pos < len(text):
        cuts.append((pos, len(text), False))
    ids: list[int] = []
    t_inst = -1
    for a, b, escape in cuts:
        piece, offsets = _encode(tokenizer, text[a:b], escape)
        if a < inst_end <= b:
            t_inst = len(ids) + _last_token(tokenizer, text[a:b], offsets, inst_end - a, escape)
        ids.extend(piece)
    return ids, t_inst


def fill_placeholders(text: str, values: dict[str, str]) -> tuple[str, list[tuple[int, int]]]:
    """`text` with each placeholder key replaced by its user value, and the (start, end) spans the values took."""
    pattern = _pattern(tuple(values))
    out, spans, pos = [], [], 0
    for m in pattern.finditer(text):
        out.append(text[pos : m.start()])
        start = sum(map(len, out))
        out.append(values[m.group(0)])
        spans.append((start, start + len(values[m.group(0)])))
        pos = m.end()
    out.append(text[pos:])
    return "".join(out), spans
