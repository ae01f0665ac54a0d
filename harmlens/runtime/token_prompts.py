"""Prompts as token ids for any generation engine: padding, stop tokens, argument checks (below every backend)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

import torch

from harmlens.errors import HarmlensError
from harmlens.runtime.chat import ChatPrompt

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

Prompts = Sequence[ChatPrompt] | Sequence[Sequence[int]]


def pad_id(tokenizer) -> int:
    """The tokenizer's pad id, else its eos id, else 0."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def stop_token_ids(model: TransformerBridge, tokenizer=None) -> list[int]:
    """Tokens that end a reply: tokenizer eos, generation-config eos and the chat template's end-of-turn token
    (`tokenizer` for a plain HF model, which has none of its own)."""
    tok = tokenizer if tokenizer is not None else model.tokenizer
    ids: list[int] = []
    gen_cfg = getattr(getattr(model, "original_model", model), "generation_config", None)
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


def token_ids(prompts: Prompts) -> list[list[int]]:
    """Token ids of ChatPrompts or of token-id lists; HarmlensError for anything else or an empty list."""
    if isinstance(prompts, (str, ChatPrompt)) or not isinstance(prompts, Sequence) or not prompts:
        raise HarmlensError("prompts must be a non-empty list of ChatPrompts or token-id lists")
    out = []
    for p in prompts:
        ids = p.input_ids if isinstance(p, ChatPrompt) else p
        if isinstance(ids, str) or not isinstance(ids, Sequence) or not ids or not all(isinstance(t, int) for t in ids):
            raise HarmlensError("prompts must be a non-empty list of ChatPrompts or token-id lists")
        out.append(list(ids))
    return out


def left_pad(seqs: Sequence[Sequence[int]], pad: int) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask of left-padded token-id lists (CPU tensors)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, width - len(s) :] = torch.tensor(list(s))
        mask[row, width - len(s) :] = 1
    return {"input_ids": ids, "attention_mask": mask}


def cut_at_stop(ids: Sequence[int], stops: Collection[int]) -> list[int]:
    """The new token ids up to (not including) the first stop token."""
    ids = list(ids)
    return ids[: next((j for j, t in enumerate(ids) if t in stops), len(ids))]
