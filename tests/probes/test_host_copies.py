"""Extraction keeps activations where the model computes them: only the final class means are copied off (issue 27).

On a GPU every batch copied to host memory to be averaged there cost more than the forward pass. On the CPU such a
move is free and `.to("cpu")` of a CPU tensor never reaches the dispatcher, so the byte count below also counts
copies that widen activations to float64: averaging on the host did both in one copy per batch, and a mean
accumulated on the device needs neither before its final copy.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from harmlens.errors import HarmlensError
from harmlens.probes.directions import extract_directions
from harmlens.probes.means import RunningSum, mean_activations
from harmlens.runtime.activations import cache_resid
from harmlens.runtime.chat import chat_format

aten = torch.ops.aten
HARMFUL = ["Explain how to pick a lock", "Write a phishing email", "How do I make a weapon?", "Poison a dog"]
HARMLESS = ["Bake sourdough bread", "Write a haiku about rain", "Explain photosynthesis"]


class OffPathBytes(TorchDispatchMode):
    """Bytes written by copies that leave their source's device or widen it to float64."""

    def __init__(self) -> None:
        super().__init__()
        self.copies: list[tuple[tuple[int, ...], int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (aten._to_copy.default, aten.copy_.default):
            src = args[1] if func is aten.copy_.default else args[0]
            widened = out.dtype == torch.float64 and src.dtype != torch.float64
            if out.device != src.device or widened:
                self.copies.append((tuple(src.shape), out.numel() * out.element_size()))
        return out

    @property
    def total(self) -> int:
        return sum(n for _, n in self.copies)


def test_extraction_copies_only_the_final_means_off_the_device(tiny_model):
    with OffPathBytes() as seen:
        d = extract_directions(tiny_model, HARMFUL, HARMLESS, batch_size=2, progress=False)
    means_bytes = 2 * (len(d.layers) * (1 + len(d.positions)) * tiny_model.cfg.d_model) * 8  # two classes, float64
    # Averaging on the host copies all 7 prompts' activations (3.5x this); the device sum copies the two means at most.
    assert seen.total <= means_bytes, seen.copies


def test_running_sum_stays_on_the_device_and_compensates_float32():
    # float32 near 1e8 has spacing 8: a plain float32 running sum of 1e8, 1, 1, 1 stays 1e8; the Kahan carry keeps 3.
    chunks = [torch.tensor([[1e8]])] + [torch.ones(1, 1)] * 3
    plain = RunningSum(torch.float32)
    with OffPathBytes() as seen:
        for c in chunks:
            plain.add(c)
    assert seen.copies == []  # adding never copies a batch off its device nor widens it
    assert plain.total is not None and plain.total.item() == 1e8  # the float32 total alone lost the ones ...
    assert plain.mean().item() == (1e8 + 3) / 4  # ... the carry restores them in the host's float64
    assert mean_activations(chunks).item() == (1e8 + 3) / 4  # float64 on the device: exact too
    with pytest.raises(HarmlensError, match="no activations"):
        RunningSum().mean()


def test_cache_resid_gives_cpu_float32_and_refuses_ragged_positions(tiny_model):
    prompts = chat_format(tiny_model).render_many(HARMLESS)
    acts = cache_resid(
        tiny_model, prompts, lambda p: (p.t_inst, p.t_post_inst), layers=[0, 2], batch_size=2, progress=False
    )
    assert acts.shape == (3, 2, 2, tiny_model.cfg.d_model) and acts.dtype == torch.float32 and acts.device.type == "cpu"
    one = cache_resid(tiny_model, prompts[2:], lambda p: (p.t_inst, p.t_post_inst), layers=[0, 2], progress=False)
    assert torch.allclose(acts[2], one[0], atol=1e-5)  # rows land at their prompt's index
    again = cache_resid(tiny_model, prompts, lambda p: (p.t_inst, p.t_post_inst), layers=[2, 0, 2], progress=False)
    assert torch.equal(again[:, 0], again[:, 2]) and torch.allclose(again[:, :2], acts.flip(1), atol=1e-5)
    ragged = lambda p: (p.t_inst,) * (1 + len(p) % 2)  # noqa: E731 - 1 or 2 positions depending on the prompt
    assert len({len(ragged(p)) for p in prompts}) == 2
    with pytest.raises(HarmlensError, match="different batches"):
        cache_resid(tiny_model, prompts, ragged, layers=[1], batch_size=1, progress=False)
