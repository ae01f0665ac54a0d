"""The part scales of a two-part span guard: each part (top token, t_inst probe) centred and scaled on harmless
prompts so the larger scaled part decides (harmlens.guards.latent.span_scoring.scaled_max reads them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from harmlens.guards.latent.span_scoring import Scores, scaled_max, span_parts


def scales_from(parts: Sequence[Mapping[str, Scores]], quantile: float = 0.95) -> dict[str, list[float]]:
    """Per part, center = the `quantile` of its raw scores on harmless prompts and width = center - their median,
    so each part flags about 1 - quantile of them at scaled score 0."""
    scales = {}
    for k in parts[0]:
        s = torch.cat([p[k][0] for p in parts]).double()
        center, median = float(torch.quantile(s, quantile)), float(torch.quantile(s, 0.5))
        scales[k] = [center, max(center - median, 1e-6)]
    return scales


def fit_scales(guard, harmless: Sequence[str], batch_size: int = 8) -> torch.Tensor:
    """Set a two-part span guard's scales from these harmless prompts (span_scoring.scales_from: each part flags about
    5% of them at score 0); returns their combined scores, so calibration needs no second forward pass."""
    rendered = [guard.prepare(p)[0] for p in harmless]
    parts = [
        span_parts(guard.score_acts, guard.tensors, guard.read(rendered[s : s + batch_size]).float().cpu())
        for s in range(0, len(rendered), batch_size)
    ]
    guard.metadata["scales"] = scales_from(parts)
    return torch.cat([scaled_max(p, guard.metadata["scales"])[0] for p in parts])
