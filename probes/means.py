"""Class means of activation batches, summed where the batches live: only the final mean leaves the device.

Why: copying every batch of activations to host memory to average it there costs more than the forward pass on a
GPU (issue 27: a [32, 33, 6, 4096] float32 batch to pageable memory per step). The sum stays on the batches'
device in float64, or, where the device has no float64 (MPS), in float32 with a Kahan compensation term that the
CPU adds back in float64.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from harmlens.errors import HarmlensError


def has_float64(device: torch.device) -> bool:
    """Whether tensors on this device can be float64 (Apple's MPS cannot)."""
    return device.type != "mps"


class RunningSum:
    """Sum of a stream of batches over their first dimension, kept on the batches' device."""

    def __init__(self, dtype: torch.dtype | None = None) -> None:
        self.dtype = dtype  # None: float64 where the first batch's device has it, else float32
        self.total: torch.Tensor | None = None
        self.carry: torch.Tensor | None = None  # float32 only: what the running total lost to rounding (Kahan)
        self.count = 0

    def add(self, acts: torch.Tensor) -> None:
        """Add one batch [n, ...]; no copy leaves its device."""
        if self.dtype is None:
            self.dtype = torch.float64 if has_float64(acts.device) else torch.float32
        part = acts.detach().sum(dim=0, dtype=self.dtype)
        self.count += acts.shape[0]
        if self.total is None:
            self.total = part
            self.carry = torch.zeros_like(part) if self.dtype != torch.float64 else None
        elif self.carry is None:
            self.total += part
        else:
            part -= self.carry
            new = self.total + part
            self.carry = (new - self.total) - part
            self.total = new

    def mean(self) -> torch.Tensor:
        """The mean on the CPU in float64: the one copy that leaves the device."""
        if self.total is None or self.count == 0:
            raise HarmlensError("no activations to average")
        total = self.total.to("cpu", torch.float64)
        if self.carry is not None:
            total = total - self.carry.to("cpu", torch.float64)
        if not torch.isfinite(total).all():
            raise HarmlensError("non-finite activations (inf/nan): check the model's dtype and weights")
        return total / self.count


def mean_activations(batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """Mean over the batch dimension of a stream of batches: summed on their device, returned float64 on the CPU."""
    total = RunningSum()
    for acts in batches:
        total.add(acts)
    return total.mean()
