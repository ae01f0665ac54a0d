"""A one-hidden-layer token probe over all read layers at once, the default token probe of a span LatentGuard.

Why: a linear probe per layer must separate a request's last token from every token of every harmless prompt; the
max over a prompt's tokens then needs a high threshold, and requests whose harmfulness reads weaker inside a wrapper
fall under it. A small MLP on the concatenated layers separates them better (README, "Latent Guard").
Per-layer scores are exact shares of the logit: with GELU(x) = x·Φ(x), logit = Σ_h w2_h·Φ(pre_h)·pre_h + b2 and
pre_h = Σ_l (W1_l x_l)_h + b1_h, so layer l's share is Σ_h w2_h·Φ(pre_h)·((W1_l x_l)_h + b1_h/L) + b2/L.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import cast

import torch
from tqdm.auto import tqdm

from harmlens.errors import HarmlensError
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


def train_mlp_probe(
    pos: torch.Tensor, neg: torch.Tensor, config: MLPProbeConfig | None = None, progress: bool = False
) -> dict[str, torch.Tensor]:
    """Fit the probe on activations [n, n_layers, d] at positive and negative tokens; returns its tensors."""
    config = config or MLPProbeConfig()
    if len(pos) == 0 or len(neg) == 0:
        raise HarmlensError("an MLP probe needs positive and negative tokens")
    generator = torch.Generator().manual_seed(config.seed)
    x = probe_features(torch.cat([pos, neg]), torch.float32)
    mean, std = x.mean(0), x.std(0) + 1e-3
    x = ((x - mean) / std).flatten(1)
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
    n_layers, d = pos.shape[1], pos.shape[2]
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        net = torch.nn.Sequential(
            torch.nn.Dropout(config.dropout),
            torch.nn.Linear(n_layers * d, config.hidden),
            torch.nn.GELU(),
            torch.nn.Linear(config.hidden, 1),
        )
        steps = config.epochs * -(-len(x) // config.batch_size)
        opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        pos_weight = torch.tensor(len(neg) / len(pos))
        bar = tqdm(total=steps, desc="span guard: MLP probe", disable=not progress, unit="step")
        for _ in range(config.epochs):
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), config.batch_size):
                batch = order[start : start + config.batch_size]
                logits = net(x[batch]).squeeze(-1)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y[batch], pos_weight=pos_weight)
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                opt.step()
                schedule.step()
                bar.update()
        bar.close()
    first, last = cast(torch.nn.Linear, net[1]), cast(torch.nn.Linear, net[3])
    return {
        "mlp_mean": mean,
        "mlp_std": std,
        "mlp_w1": first.weight.detach().view(config.hidden, n_layers, d),
        "mlp_b1": first.bias.detach(),
        "mlp_w2": last.weight.detach()[0],
        "mlp_b2": last.bias.detach(),
    }


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
