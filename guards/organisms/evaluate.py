"""Organism evaluation: greedy replies judged by attacks' JailbreakBench/Arditi substring judge, reply perplexity."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from harmlens.attacks.judges import is_refusal, refusal_rate
from harmlens.attacks.phrases import JBB_PHRASES
from harmlens.runtime import ChatFormat, GenerationConfig, generation_config, hf_generate_ids, left_pad

# The refusal judge is attacks' substring judge with the JailbreakBench/Arditi phrase list (case-insensitive,
# anywhere in the reply, an empty reply counts as a refusal); re-exported here for the organism's callers.
REFUSAL_PREFIXES = JBB_PHRASES
# The organism evaluation's replies: greedy, 48 new tokens (a recipe's eval_max_new_tokens), 32 prompts a batch.
EVAL_CONFIG = GenerationConfig(max_new_tokens=48, batch_size=32)
__all__ = [
    "EVAL_CONFIG",
    "REFUSAL_PREFIXES",
    "evaluate_organism",
    "generate_replies",
    "is_refusal",
    "refusal_rate",
    "reply_perplexity",
]


def _prompts(tokenizer, instructions: Sequence[str]) -> list[list[int]]:
    fmt = ChatFormat.from_tokenizer(tokenizer)
    return [tokenizer(fmt.render_text(x), add_special_tokens=False)["input_ids"] for x in instructions]


@torch.no_grad()
def generate_replies(
    hf,
    tokenizer,
    instructions: Sequence[str],
    config: GenerationConfig | Mapping | None = None,
    *,
    desc: str = "generate",
) -> list[str]:
    """Replies of a plain HF model (`config`; None: EVAL_CONFIG, greedy), left-padded length-sorted batches, in order."""
    config = generation_config(EVAL_CONFIG if config is None else config)
    prompts = _prompts(tokenizer, instructions)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = hf.training
    hf.eval()
    ids = hf_generate_ids(
        hf,
        [len(p) for p in prompts],
        lambda idx: left_pad([prompts[i] for i in idx], pad),
        config,
        stops=[tokenizer.eos_token_id],
        pad=pad,
        desc=desc,
    )
    out = [tokenizer.decode(t, skip_special_tokens=True).strip() for t in ids]
    hf.train(was_training)
    return out


@torch.no_grad()
def reply_perplexity(
    hf, tokenizer, instructions: Sequence[str], replies: Sequence[str], *, batch_size: int = 16
) -> float:
    """Perplexity of the replies under `hf`, each conditioned on its rendered prompt (pooled over tokens)."""
    pairs = [
        (p, tokenizer(r, add_special_tokens=False)["input_ids"])
        for p, r in zip(_prompts(tokenizer, instructions), replies)
        if r.strip()
    ]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(hf.parameters()).device
    nll, count = 0.0, 0
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s : s + batch_size]
        width = max(len(p) + len(r) for p, r in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        mask = torch.zeros_like(ids)
        for row, (p, r) in enumerate(chunk):
            ids[row, : len(p) + len(r)] = torch.tensor(p + r)
            labels[row, len(p) : len(p) + len(r)] = torch.tensor(r)
            mask[row, : len(p) + len(r)] = 1
        logits = hf(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1].float()
        target = labels[:, 1:].to(device)
        nll += torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="sum").item()
        count += int((target != -100).sum())
    return math.exp(nll / max(1, count))


def evaluate_organism(
    organism,
    base,
    tokenizer,
    sets: Mapping[str, Sequence[str]],
    config: GenerationConfig | Mapping | None = None,
) -> dict:
    """Refusal rate per eval set (`config`; None: EVAL_CONFIG, greedy) and base-model perplexity of organism vs base
    replies on 'harmless'; all replies are returned under 'replies', the settings under 'generation'."""
    config = generation_config(EVAL_CONFIG if config is None else config)
    result: dict = {
        "judge": "substring (JailbreakBench prefixes)",
        "max_new_tokens": config.max_new_tokens,
        "generation": config.to_dict(),
        "sets": {},
    }
    replies = {}
    for name, prompts in sets.items():
        replies[name] = generate_replies(
            organism,
            tokenizer,
            prompts,
            config,
            desc=f"eval {name}",
        )
        result["sets"][name] = {
            "n": len(prompts),
            "refusal_rate": round(refusal_rate(replies[name]), 4),
            "examples": [[p, r] for p, r in list(zip(prompts, replies[name]))[:3]],
        }
    if "harmless" in sets:
        prompts = list(sets["harmless"])
        own = generate_replies(
            base,
            tokenizer,
            prompts,
            config,
            desc="base replies",
        )
        result["perplexity"] = {
            "scorer": "base model",
            "organism_replies": round(reply_perplexity(base, tokenizer, prompts, replies["harmless"]), 3),
            "base_replies": round(reply_perplexity(base, tokenizer, prompts, own), 3),
            "base_refusal_rate_harmless": round(refusal_rate(own), 4),
        }
        replies["harmless_base"] = own
    result["replies"] = {
        k: [[p, r] for p, r in zip(sets.get(k) or sets.get("harmless") or [], v)] for k, v in replies.items()
    }
    return result
