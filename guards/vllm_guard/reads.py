"""What the guard reads from one vLLM request: positions asked for, rows returned by the worker, a verdict cache."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from harmlens.guards.latent.verdict import Verdict, one_line
from harmlens.runtime import ChatPrompt

if TYPE_CHECKING:
    from harmlens.guards.latent.guard import LatentGuard


@dataclass
class Read:
    """One guarded request: its prompt, the positions it reads, the rows captured, its verdict once decided."""

    index: int
    prompt: ChatPrompt
    truncated: bool
    positions: tuple[int, ...]
    rows: dict[str, bytes] = field(default_factory=dict)
    verdict: Verdict | None = None
    tokens: list[int] = field(default_factory=list)
    attempt: int = 1

    @property
    def key(self) -> tuple[int, ...]:
        """The tokens the verdict depends on: activations at positions <= p depend only on tokens <= p (causal)."""
        return tuple(self.prompt.input_ids[: max(self.positions) + 1])

    def missing(self, layers: Sequence[int]) -> list[str]:
        """'layer:pos' rows the worker did not capture (e.g. positions served from vLLM's prefix cache)."""
        return [f"{layer}:{p}" for layer in layers for p in set(self.positions) if f"{layer}:{p}" not in self.rows]

    def acts(self, layers: Sequence[int], positions: Sequence[int]) -> torch.Tensor:
        """[n_layers, n_positions, d_model] float32 from the captured rows."""
        rows = [[np.frombuffer(self.rows[f"{layer}:{p}"], dtype=np.float32) for p in positions] for layer in layers]
        return torch.from_numpy(np.array(rows, dtype=np.float32))


def score_reads(guard: LatentGuard, reads: list[Read]) -> list[Verdict]:
    """Verdicts for reads whose rows are all captured (padded to one width as the HF path pads); a failing batch is
    retried read by read, and a read that fails alone fails closed."""
    layers = guard.layers

    def batch(items: list[Read]) -> list[Verdict]:
        width = guard.width([r.prompt for r in items])
        acts = torch.stack([r.acts(layers, guard.select(r.prompt, width)) for r in items])
        verdicts = guard.verdicts_from_acts(acts, [r.truncated for r in items])
        if len(verdicts) != len(items):
            raise RuntimeError(f"{len(verdicts)} verdicts for {len(items)} prompts")
        return verdicts

    try:
        return batch(reads)
    except Exception:  # noqa: BLE001 - retry alone, so one bad read fails alone
        out = []
        for r in reads:
            try:
                out.append(batch([r])[0])
            except Exception as exc:  # noqa: BLE001 - fail closed, say why
                out.append(guard.failed(f"internal error: {one_line(exc)}", r.truncated, attempted=True))
        return out


class VerdictCache:
    """Verdicts by the token prefix they depend on (LRU): a prompt whose prefix vLLM serves from its KV cache is not
    recomputed, so its activations never appear; the verdict of the same prefix, read earlier, is reused."""

    def __init__(self, size: int = 4096) -> None:
        self.size, self.items = size, OrderedDict[tuple, Verdict]()

    def get(self, key: tuple) -> Verdict | None:
        """The cached verdict, if any (marks it recently used)."""
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        return None

    def put(self, key: tuple, verdict: Verdict) -> None:
        """Remember a verdict that came from a real read (never a failed one)."""
        if verdict.error is None:
            self.items[key] = verdict
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)

    def clear(self) -> None:
        """Forget every verdict (call with vLLM's reset_prefix_cache)."""
        self.items.clear()
