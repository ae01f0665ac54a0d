"""Next-token choice per row of a batch: greedy, or sampled with the row's own temperature, top_p and generator."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def sample_rows(logits: torch.Tensor, rows: Sequence[Any]) -> list[int]:
    """One token per row of logits [n, vocab]: argmax unless rows[k].temperature > 0, then nucleus sampling
    (top_p: the smallest set of tokens reaching that mass) from rows[k].generator, so a seed reproduces a row's
    reply whatever else is in the batch."""
    out = logits.argmax(dim=-1).tolist()
    for row, r in enumerate(rows):
        if r.temperature > 0:
            probs = torch.softmax(logits[row].float() / r.temperature, dim=-1)
            if r.top_p < 1:
                sorted_p, order = probs.sort(descending=True)
                sorted_p[sorted_p.cumsum(0) - sorted_p >= r.top_p] = 0
                probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
            out[row] = int(torch.multinomial(probs / probs.sum(), 1, generator=r.generator))
    return out
