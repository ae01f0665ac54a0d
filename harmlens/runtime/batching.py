"""Length-sorted batching: prompts of similar length share a batch, so padding (and wasted compute) stays small."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from harmlens.errors import HarmlensError


def check_batch_size(batch_size: int) -> int:
    """A positive integer batch size, else HarmlensError."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise HarmlensError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


def length_order(lengths: Sequence[int]) -> list[int]:
    """Indices sorted by length (stable: equal lengths keep their input order)."""
    return sorted(range(len(lengths)), key=lambda i: lengths[i])


def sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[tuple[int, list[int]]]:
    """(start, indices) per batch of length-sorted items; `start` is the batch's offset (seeds per batch use it)."""
    order = length_order(lengths)
    check_batch_size(batch_size)
    for start in range(0, len(order), batch_size):
        yield start, order[start : start + batch_size]
