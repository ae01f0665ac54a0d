"""How judge models generate: a plain HF causal LM (no TransformerLens bridge, no hooks) behind one function.

``judge_generate`` is the only place a judge turns prompt texts into output texts, so it can be swapped for another
generation backend (vLLM, an API) without touching the judge formats.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from harmlens.errors import HarmlensError
from harmlens.runtime import ChatPrompt, GenerationConfig


@dataclass
class JudgeModel:
    """A loaded judge: the HF model, its tokenizer and the name it was loaded by (what judge_generate reads)."""

    original_model: Any
    tokenizer: Any
    harmlens_name: str

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        """The HF model's parameters (callers read the device from them)."""
        return self.original_model.parameters()


def load_judge_model(name: str, *, device=None, dtype: torch.dtype | None = None) -> JudgeModel:
    """Load a judge by name or folder as a plain HF model (eager hooks and the bridge are not needed to judge)."""
    from harmlens.runtime import load_hf

    hf, tok, canonical = load_hf(name, dtype=dtype, device=device)
    return JudgeModel(hf, tok, canonical)


def as_judge_model(model) -> JudgeModel:
    """A JudgeModel from a JudgeModel, a harmlens bridge (its HF model is used without hooks) or an HF model."""
    if isinstance(model, JudgeModel):
        return model
    hf = getattr(model, "original_model", None)
    tok = getattr(model, "tokenizer", None)
    if hf is not None and tok is not None:
        return JudgeModel(hf, tok, getattr(model, "harmlens_name", None) or "judge-model")
    raise HarmlensError(f"a judge model must be a name, a JudgeModel or a harmlens model, got {type(model).__name__}")


def judge_generate(
    model: JudgeModel,
    texts: Sequence[str | ChatPrompt],
    config: GenerationConfig,
    *,
    bos: bool = False,
) -> list[str]:
    """Continuations (as `config` says; judges pass greedy, progress=False) of fully rendered judge inputs: strings
    (bos: prepend the tokenizer's special tokens) or already tokenized ChatPrompts."""
    from harmlens.runtime import hf_generate_ids, left_pad, pad_id, stop_token_ids

    tok = model.tokenizer
    prompts = []
    for text in texts:
        if isinstance(text, ChatPrompt):
            prompts.append(text)
            continue
        ids = tuple(tok(text, add_special_tokens=bos)["input_ids"])
        prompts.append(ChatPrompt(text, text, ids, max(len(ids) - 2, 0), (len(ids) - 1,)))
    seqs, hf, pid = [list(p.input_ids) for p in prompts], model.original_model, pad_id(tok)
    encode = lambda idx: left_pad([seqs[i] for i in idx], pid)  # noqa: E731
    stops = stop_token_ids(hf, tok)
    out = hf_generate_ids(hf, [len(s) for s in seqs], encode, config, stops=stops, pad=pid, desc="judging")
    return [tok.decode(ids, skip_special_tokens=True) for ids in out]
