"""A one-hidden-layer token probe over all read layers at once, the default token probe of a span LatentGuard: its
settings, tensor keys and scoring (its training is harmlens.guards.fitting.probe_training.train_mlp_probe).

Why: a linear probe per layer must separate a request's last token from every token of every harmless prompt; the
max over a prompt's tokens then needs a high threshold, and requests whose harmfulness reads weaker inside a wrapper
fall under it. A small MLP on the concatenated layers separates them better (README, "Latent Guard").
Per-layer scores are exact shares of the logit: with GELU(x) = x·Φ(x), logit = Σ_h w2_h·Φ(pre_h)·pre_h + b2 and
pre_h = Σ_l (W1_l x_l)_h + b1_h, so layer l's share is Σ_h w2_h·Φ(pre_h)·((W1_l x_l)_h + b1_h/L) + b2/L.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from harmlens.guards.latent.span_scoring import probe_features

MLP_KEYS = ("mlp_mean", "mlp_std", "mlp_w1", "mlp_b1", "mlp_w2", "mlp_b2")


@dataclass(frozen=True)
class MLPProbeConfig:
    """Training settings of the MLP token probe (AdamW, cosine-decayed learning rate, class-balanced loss)."""

    hidden: int = 128
    epochs: int = 6
    lr: float = 1e-3
    weight_decay: float = 1e-2
    dropout: float = 0.2
    batch_size: int = 512
    seed: int = 0

    def to_dict(self) -> dict:
        """JSON-ready settings (stored in the guard's metadata)."""
        return asdict(self)


def mlp_scores(
    tensors: dict[str, torch.Tensor], acts: torch.Tensor, chunk: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logit [n], per-layer scores [n, n_layers] whose mean is the logit) of activations [n, n_layers, d]."""
    w1, b1, w2, b2 = (tensors[k].float() for k in ("mlp_w1", "mlp_b1", "mlp_w2", "mlp_b2"))
    n_layers = w1.shape[1]
    scores, per_layer = [], []
    for start in range(0, len(acts), chunk):
        x = (probe_features(acts[start : start + chunk], torch.float32) - tensors["mlp_mean"]) / tensors["mlp_std"]
        z = torch.einsum("nld,hld->nlh", x, w1) + b1 / n_layers  # each layer's share of the pre-activation
        gate = w2 * torch.special.ndtr(z.sum(1))  # w2_h·Φ(pre_h)
        share = torch.einsum("nlh,nh->nl", z, gate) + b2 / n_layers
        scores.append(share.sum(-1))
        per_layer.append(share * n_layers)
    return torch.cat(scores), torch.cat(per_layer)
