"""The driver side of a prefill read on vLLM: the worker's rows as a reader's activations, and the rows vLLM's prefix
cache hides, served from an earlier read of the same tokens.

The worker extension (harmlens.runtime.vllm_worker) copies the rows; the engine (harmlens.runtime.vllm_engine) asks for
them once a request's prefill is done and hands them to the reader (PrefillRead.decide).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np
import torch

DEFAULT_CACHE_BYTES = 256 * 2**20
ReadKey = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


def rows_acts(rows: Mapping[str, bytes], layers: Sequence[int], positions: Sequence[int]) -> torch.Tensor | None:
    """[len(layers), len(positions), d_model] float32 from the worker's {"layer:pos": float32 bytes}; None if a row
    is missing (its positions were served from vLLM's prefix cache, or the hooks never fired)."""
    keys = [[f"{layer}:{p}" for p in positions] for layer in layers]
    if not all(k in rows for row in keys for k in row):
        return None
    grid = [[np.frombuffer(rows[k], dtype=np.float32) for k in row] for row in keys]
    return torch.from_numpy(np.array(grid, dtype=np.float32))


def read_key(tokens: Sequence[int], layers: Sequence[int], positions: Sequence[int]) -> ReadKey:
    """What a read's rows depend on: the tokens up to its last position (causal), the layers and positions read."""
    return tuple(tokens[: max(positions) + 1]), tuple(layers), tuple(positions)


class ReadCache:
    """Rows read earlier, by the tokens they depend on (LRU, bounded in bytes).

    vLLM's prefix cache skips the prefill of blocks it holds, so the rows of a prompt whose read positions lie in
    cached blocks never appear; the rows of the same tokens, read before, are the same numbers (same weights, causal
    attention), so they are served from here instead of recomputing the prefill.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes, self.bytes = int(max_bytes), 0
        self.items: OrderedDict[ReadKey, torch.Tensor] = OrderedDict()

    def get(self, key: ReadKey) -> torch.Tensor | None:
        """The cached rows, if any (marks them recently used)."""
        acts = self.items.get(key)
        if acts is not None:
            self.items.move_to_end(key)
        return acts

    def put(self, key: ReadKey, acts: torch.Tensor) -> None:
        """Remember rows read from a real prefill; the least recently used go first when over the byte bound."""
        size = acts.numel() * acts.element_size()
        if size > self.max_bytes:
            return
        old = self.items.pop(key, None)
        if old is not None:
            self.bytes -= old.numel() * old.element_size()
        self.items[key] = acts
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, dropped = self.items.popitem(last=False)
            self.bytes -= dropped.numel() * dropped.element_size()

    def clear(self) -> None:
        """Forget every row (VLLMBackend.reset_prefix_cache calls it with vLLM's own reset)."""
        self.items.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.items)
