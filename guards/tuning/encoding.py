"""Training data for LoRA fine-tuning: (instruction, response) examples -> masked token sequences -> batches."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from harmlens.errors import HarmlensError
from harmlens.runtime import ChatFormat, clean_instruction

if TYPE_CHECKING:
    from harmlens.guards.tuning.training import TrainConfig

IGNORE = -100  # label of positions that carry no loss (prompt, padding)
_PLACEHOLDER = "\ue000HARMLENS_RESPONSE\ue001"


@dataclass(frozen=True)
class Example:
    """One training pair: a user instruction and the assistant's answer."""

    instruction: str
    response: str


class Encoded(NamedTuple):
    """A tokenized example: input ids and labels (IGNORE on the prompt)."""

    input_ids: list[int]
    labels: list[int]


def end_of_turn(tokenizer) -> str:
    """The string the chat template puts after an assistant answer (e.g. '<|im_end|>'), else the EOS token."""
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PLACEHOLDER}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # templates that cannot render an assistant turn
        text = ""
    eot = text.rpartition(_PLACEHOLDER)[2].strip() if _PLACEHOLDER in text else ""
    eot = eot or (tokenizer.eos_token or "")
    if not eot:
        raise HarmlensError("cannot tell the end-of-turn token: the template shows none and the tokenizer has no EOS")
    return eot


def as_examples(examples: Sequence) -> list[Example]:
    """Validate (instruction, response) tuples or Examples; HarmlensError on an empty set or a missing response."""
    if not examples:
        raise HarmlensError("empty training set")
    out = []
    for i, ex in enumerate(examples):
        if isinstance(ex, Example):
            inst, resp = ex.instruction, ex.response
        elif isinstance(ex, (tuple, list)) and len(ex) == 2:
            inst, resp = ex
        else:
            raise HarmlensError(f"training example {i} is not an (instruction, response) pair")
        if not isinstance(resp, str) or not resp.strip():
            raise HarmlensError(f"training example {i} has no response")
        try:
            inst = clean_instruction(inst)
        except HarmlensError as exc:
            raise HarmlensError(f"training example {i}: {exc}") from None
        out.append(Example(inst, resp.strip()))
    return out


def encode(
    examples: Sequence,
    tokenizer,
    *,
    max_length: int,
    max_response_tokens: int | None = None,
    prompt_transform: Callable[[str, int], str] | None = None,
) -> list[Encoded]:
    """Tokenize prompt (template-rendered, optionally transformed) + response + end-of-turn; mask the prompt.
    Answers are cut to max_response_tokens by design; whole sequences over max_length are cut with a warning."""
    examples = as_examples(examples)
    fmt, eot = ChatFormat.from_tokenizer(tokenizer), end_of_turn(tokenizer)
    out, truncated = [], 0
    for i, ex in enumerate(examples):
        prompt = fmt.render_text(ex.instruction)
        if prompt_transform is not None:
            prompt = prompt_transform(prompt, i)
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r = tokenizer(ex.response + eot, add_special_tokens=False)["input_ids"][:max_response_tokens]
        if len(p) + len(r) > max_length:
            if len(p) >= max_length:
                raise HarmlensError(
                    f"training example {i}: the prompt alone is {len(p)} tokens, "
                    f"no room for a response within max_length={max_length}"
                )
            r, truncated = r[: max_length - len(p)], truncated + 1
        out.append(Encoded(p + r, [IGNORE] * len(p) + r))
    if truncated:
        warnings.warn(
            f"{truncated} of {len(out)} training examples are longer than max_length={max_length} "
            f"tokens: their responses were truncated (and lose the end-of-turn token)",
            stacklevel=2,
        )
    return out


def batch_plan(lengths: Sequence[int], config: TrainConfig) -> list[list[int]]:
    """Example indices of every step: seeded shuffle per epoch, length-sorted windows, shuffled batch order."""
    plan: list[list[int]] = []
    window = config.batch_size * max(1, config.bucket)
    epoch = 0
    while len(plan) < config.max_steps:
        rng = np.random.default_rng([config.seed, epoch])
        order = rng.permutation(len(lengths)).tolist()
        batches = []
        for s in range(0, len(order), window):
            part = order[s : s + window]
            if config.bucket > 1:
                part = sorted(part, key=lambda i: (lengths[i], i))
            batches += [part[j : j + config.batch_size] for j in range(0, len(part), config.batch_size)]
        plan += [batches[i] for i in rng.permutation(len(batches)).tolist()]
        epoch += 1
    return plan[: config.max_steps]


def collate(encoded: Sequence[Encoded], idx: Sequence[int], pad_id: int, device) -> tuple[torch.Tensor, ...]:
    """Right-padded (input_ids, attention_mask, labels) of the given examples, padded to the longest one."""
    width = max(len(encoded[i].input_ids) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    labels = torch.full((len(idx), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        n = len(encoded[i].input_ids)
        ids[row, :n] = torch.tensor(encoded[i].input_ids)
        labels[row, :n] = torch.tensor(encoded[i].labels)
        mask[row, :n] = 1
    return ids.to(device), mask.to(device), labels.to(device)
