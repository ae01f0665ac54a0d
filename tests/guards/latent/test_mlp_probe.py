"""harmlens.guards.latent.mlp_probe: exact per-layer shares, a pattern no per-layer linear probe can learn, seeded training."""

from __future__ import annotations

import pytest
import torch

from harmlens.errors import HarmlensError
from harmlens.guards.fitting.probe_training import train_mlp_probe, train_probes
from harmlens.guards.latent.calibration import auroc
from harmlens.guards.latent.mlp_probe import MLPProbeConfig, mlp_scores
from harmlens.guards.latent.span_scoring import probe_features, probe_scores


def _xor(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations [n, 2 layers, 4]: harmful ⇔ feature 0 has the same sign at both layers (an XOR across layers)."""
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(n, 2, 4, generator=g)
    label = (acts[:, 0, 0] > 0) == (acts[:, 1, 0] > 0)
    return acts, label


def test_per_layer_shares_average_to_the_networks_logit():
    g = torch.Generator().manual_seed(0)
    hidden, n_layers, d = 5, 3, 4
    tensors = {
        "mlp_mean": torch.randn(n_layers, d, generator=g),
        "mlp_std": torch.rand(n_layers, d, generator=g) + 0.5,
        "mlp_w1": torch.randn(hidden, n_layers, d, generator=g),
        "mlp_b1": torch.randn(hidden, generator=g),
        "mlp_w2": torch.randn(hidden, generator=g),
        "mlp_b2": torch.randn(1, generator=g),
    }
    acts = torch.randn(7, n_layers, d, generator=g) * 3
    x = ((probe_features(acts, torch.float32) - tensors["mlp_mean"]) / tensors["mlp_std"]).flatten(1)
    pre = x @ tensors["mlp_w1"].flatten(1).T + tensors["mlp_b1"]
    logit = torch.nn.functional.gelu(pre) @ tensors["mlp_w2"] + tensors["mlp_b2"]
    score, per_layer = mlp_scores(tensors, acts, chunk=3)
    assert score.tolist() == pytest.approx(logit.tolist(), abs=1e-4)
    assert per_layer.mean(-1).tolist() == pytest.approx(logit.tolist(), abs=1e-4)
    assert not torch.allclose(per_layer[:, 0], per_layer[:, 1])  # the shares differ by layer


def test_learns_a_cross_layer_pattern_a_per_layer_linear_probe_cannot():
    acts, label = _xor(3000, seed=0)
    config = MLPProbeConfig(hidden=32, epochs=30, dropout=0.0, lr=3e-3)
    mlp = train_mlp_probe(acts[label], acts[~label], config)
    linear = train_probes(acts[label], acts[~label])
    test, test_label = _xor(1000, seed=1)
    mlp_score, linear_score = mlp_scores(mlp, test)[0], probe_scores(linear, test)[0]
    assert auroc(mlp_score[test_label], mlp_score[~test_label]) > 0.9
    assert auroc(linear_score[test_label], linear_score[~test_label]) < 0.65


def test_seeded_and_checked():
    acts, label = _xor(200, seed=2)
    config = MLPProbeConfig(hidden=4, epochs=1, seed=3)
    a, b = train_mlp_probe(acts[label], acts[~label], config), train_mlp_probe(acts[label], acts[~label], config)
    assert all(torch.equal(a[k], b[k]) for k in a) and a["mlp_w1"].shape == (4, 2, 4)
    c = train_mlp_probe(acts[label], acts[~label], MLPProbeConfig(hidden=4, epochs=1, seed=4))
    assert not torch.equal(a["mlp_w1"], c["mlp_w1"])
    with pytest.raises(HarmlensError, match="positive and negative"):
        train_mlp_probe(acts[:0], acts, config)
