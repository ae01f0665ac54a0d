"""Scoring a span read [n, n_layers, n_pos, d_model]: the token probe's top token and, for a two-part guard, the
t_inst probe, each scaled on harmless prompts so the larger part decides (see harmlens.guards.fitting.span_fit for the fit)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

Scores = tuple[torch.Tensor, torch.Tensor]  # (score [n], per-layer scores [n, n_layers])
PROBE_KEYS = ("probe_weight", "probe_bias", "probe_mean")
TINST_PROBE_KEYS = ("tinst_probe_weight", "tinst_probe_bias", "tinst_probe_mean")


def probe_features(acts: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Activations [.., d] scaled to norm √d in `dtype` (float64: logistic probes; float32: MLP), before centring."""
    return torch.nn.functional.normalize(acts.to(dtype), dim=-1) * acts.shape[-1] ** 0.5


def probe_scores(tensors: Mapping[str, torch.Tensor], acts: torch.Tensor, prefix: str = "probe") -> Scores:
    """Per-layer logistic-probe logits of activations [n, n_layers, d] (tensors `{prefix}_weight/_bias/_mean`)."""
    x = probe_features(acts) - tensors[f"{prefix}_mean"].double()
    per_layer = (x * tensors[f"{prefix}_weight"].double()).sum(-1) + tensors[f"{prefix}_bias"].double()
    return per_layer.mean(-1).float(), per_layer.float()


def top_position(score: Callable[[torch.Tensor], Scores], acts: torch.Tensor) -> Scores:
    """The top-scoring position of each row of a read [n, n_layers, n_pos, d], scored one position at a time."""
    n, n_pos = acts.shape[0], acts.shape[2]
    scores, per_layer = score(acts.permute(0, 2, 1, 3).flatten(0, 1))
    scores, per_layer = scores.view(n, n_pos), per_layer.view(n, n_pos, -1)
    top, rows = scores.argmax(1), torch.arange(n)
    return scores[rows, top], per_layer[rows, top]


def span_parts(
    score: Callable[[torch.Tensor], Scores], tensors: Mapping[str, torch.Tensor], acts: torch.Tensor
) -> dict[str, Scores]:
    """Raw scores of each part of a span read: 'span', the top token, and, when fitted, 't_inst', the t_inst probe at
    the last position (a span read always ends at t_inst)."""
    parts = {"span": top_position(score, acts)}
    if "tinst_probe_weight" in tensors:
        parts["t_inst"] = probe_scores(tensors, acts[:, :, -1], "tinst_probe")
    return parts


def scaled_max(parts: Mapping[str, Scores], scales: Mapping[str, Sequence[float]]) -> Scores:
    """Each part as (raw - center) / width, per layer; the part with the larger mean decides each row."""
    z = {k: (parts[k][1] - c) / w for k, (c, w) in scales.items()}
    stacked = torch.stack([z[k] for k in scales])  # [n_parts, n, n_layers]
    best = stacked.mean(-1).argmax(0)
    per_layer = stacked[best, torch.arange(stacked.shape[1])]
    return per_layer.mean(-1), per_layer
