"""harmlens.guards.latent.span_scoring: the top token, the scaled parts and their scales, on seeded random tensors."""

from __future__ import annotations

import pytest
import torch

from harmlens.guards.fitting.scales import scales_from
from harmlens.guards.latent.span_scoring import probe_scores, scaled_max, span_parts, top_position


def _mean_score(acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    per_layer = acts.sum(-1)
    return per_layer.mean(-1), per_layer


def test_top_position_picks_each_rows_best_token():
    acts = torch.randn(3, 2, 5, 4, generator=torch.Generator().manual_seed(0))
    score, per_layer = top_position(_mean_score, acts)
    by_hand = acts.sum(-1).mean(1)  # [n, n_pos]
    assert score.tolist() == pytest.approx(by_hand.max(1).values.tolist(), abs=1e-6)
    assert per_layer.shape == (3, 2) and per_layer.mean(-1).tolist() == pytest.approx(score.tolist(), abs=1e-6)


def test_scaled_max_takes_the_larger_part_per_row():
    parts = {
        "span": (None, torch.tensor([[2.0, 4.0], [0.0, 0.0]])),
        "t_inst": (None, torch.tensor([[1.0, 1.0], [5.0, 7.0]])),
    }
    score, per_layer = scaled_max(parts, {"span": [1.0, 2.0], "t_inst": [2.0, 1.0]})
    # row 0: span z = (0.5, 1.5) mean 1 vs t_inst z = (-1, -1); row 1: span z = -0.5 vs t_inst z = (3, 5) mean 4
    assert score.tolist() == pytest.approx([1.0, 4.0]) and per_layer.tolist() == [[0.5, 1.5], [3.0, 5.0]]


def test_scales_from_centers_on_the_quantile_over_batches():
    scores = torch.arange(100.0)
    parts = [{"span": (scores[:40], None)}, {"span": (scores[40:], None)}]
    ((center, width),) = scales_from(parts).values()
    assert center == pytest.approx(float(torch.quantile(scores.double(), 0.95)))
    assert width == pytest.approx(center - float(torch.quantile(scores.double(), 0.5)))
    assert scales_from([{"span": (torch.ones(5), None)}])["span"][1] > 0  # a constant part keeps a positive width


def test_span_parts_reads_the_t_inst_probe_at_the_last_position():
    g = torch.Generator().manual_seed(1)
    tensors = {
        "tinst_probe_weight": torch.randn(2, 4, generator=g),
        "tinst_probe_bias": torch.randn(2, generator=g),
        "tinst_probe_mean": torch.zeros(2, 4),
    }
    acts = torch.randn(3, 2, 5, 4, generator=g)
    parts = span_parts(_mean_score, tensors, acts)
    assert list(parts) == ["span", "t_inst"]
    expected = probe_scores(tensors, acts[:, :, -1], "tinst_probe")[0]
    assert parts["t_inst"][0].tolist() == pytest.approx(expected.tolist())
    assert list(span_parts(_mean_score, {}, acts)) == ["span"]
