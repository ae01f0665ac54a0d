"""The driver side of a vLLM prefill read, without vLLM: the worker's rows become [layers, positions, d_model] in the
reader's order (None when one is missing), and the read cache is keyed by the tokens a row depends on and bounded in
bytes."""

import numpy as np
import torch

from harmlens.runtime import ReadCache
from harmlens.runtime.vllm_reads import read_key, rows_acts


def _rows(layers, positions, d=4):
    return {
        f"{layer}:{p}": np.full(d, 10 * layer + p, dtype=np.float32).tobytes() for layer in layers for p in positions
    }


def test_rows_become_acts_in_the_readers_order_and_a_missing_row_is_none():
    rows = _rows((2, 5), (7, 3))
    acts = rows_acts(rows, (5, 2), (3, 7, 3))
    assert acts is not None and acts.shape == (2, 3, 4) and acts.dtype == torch.float32
    assert acts[:, :, 0].tolist() == [[53, 57, 53], [23, 27, 23]]
    assert rows_acts(rows, (5, 2), (3, 8)) is None
    assert rows_acts({}, (1,), (0,)) is None


def test_read_key_keeps_only_the_tokens_up_to_the_last_position():
    assert read_key([9, 8, 7, 6, 5], (1, 2), (1, 3)) == ((9, 8, 7, 6), (1, 2), (1, 3))
    assert read_key([9, 8, 7, 6, 5], (1, 2), (1, 3)) == read_key([9, 8, 7, 6, 4, 4], (1, 2), (1, 3))
    assert read_key([9, 8, 7, 6], (1, 2), (1, 3)) != read_key([9, 8, 7, 6], (1,), (1, 3))


def test_read_cache_is_lru_and_bounded_in_bytes():
    one = torch.zeros(2, 2, 4)  # 64 bytes
    cache = ReadCache(max_bytes=3 * 64)
    keys = [read_key([i, 1], (0,), (1,)) for i in range(4)]
    for key in keys[:3]:
        cache.put(key, one)
    assert cache.get(keys[0]) is one  # 0 is now the most recently used
    cache.put(keys[3], one)
    assert len(cache) == 3 and cache.bytes == 3 * 64
    assert cache.get(keys[1]) is None and cache.get(keys[0]) is one and cache.get(keys[3]) is one
    cache.put(keys[3], one)  # replacing a key does not count it twice
    assert cache.bytes == 3 * 64
    cache.put(read_key([7, 7], (0,), (1,)), torch.zeros(100))  # larger than the bound: not kept
    assert len(cache) == 3
    cache.clear()
    assert len(cache) == 0 and cache.bytes == 0
