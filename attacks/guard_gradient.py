"""The gradient of a guard's score with respect to its read, through the guard's public `score_acts` only.

Why: `LatentGuard.score_acts` detaches its input (a deployed guard never back-propagates), so a white-box attacker
takes the gradient by forward differences, one coordinate of the top-scoring read position at a time: L × d_model
rows scored in a few batched calls. For a linear or centroid guard this is the exact gradient up to float error; for
a span guard it is the gradient of the token probe at the token that currently decides (a max moves only there).
"""

from __future__ import annotations

from typing import Any

import torch

from harmlens.errors import HarmlensError


def position_scores(guard: Any, acts: torch.Tensor) -> torch.Tensor:
    """Per-position scores [n_pos] of one read [1, n_layers, n_pos, d_model], each position scored alone."""
    if acts.dim() != 4 or acts.shape[0] != 1:
        raise HarmlensError(f"a guard read must be [1, n_layers, n_pos, d_model], got {tuple(acts.shape)}")
    return guard.score_acts(acts[0].detach().float().cpu().transpose(0, 1))[0].double()


def score_gradient(guard: Any, acts: torch.Tensor, *, rel_step: float = 1e-2, chunk: int = 512) -> torch.Tensor:
    """∂score/∂acts for one read [1, n_layers, n_pos, d_model]: non-zero at the top-scoring position only, taken by
    forward differences of step rel_step × the mean |activation| of each layer."""
    per_pos = position_scores(guard, acts)
    top = int(per_pos.argmax())
    x = acts[0, :, top].detach().float().cpu()  # [L, d]
    n_layers, d = x.shape
    steps = (rel_step * x.abs().mean(-1, keepdim=True).clamp_min(1e-6)).expand(n_layers, d).reshape(-1)
    flat, grad = x.reshape(-1), torch.zeros(n_layers * d, dtype=torch.float64)
    for start in range(0, len(flat), chunk):
        idx = torch.arange(start, min(start + chunk, len(flat)))
        rows = flat.repeat(len(idx), 1)
        rows[torch.arange(len(idx)), idx] += steps[idx]
        moved = guard.score_acts(rows.view(-1, n_layers, d))[0].double()
        grad[idx] = (moved - per_pos[top]) / steps[idx].double()
    out = torch.zeros(acts.shape[1:], dtype=torch.float32)
    out[:, top] = grad.view(n_layers, d).float()
    return out[None].to(acts.device)
