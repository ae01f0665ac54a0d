"""Training the probes a guard scores with: per-layer logistic probes (probe, span-linear, the two-part t_inst part)
and the MLP token probe (span-mlp); their scoring stays in harmlens.guards.latent (span_scoring, mlp_probe)."""

from __future__ import annotations

from typing import cast

import torch
from tqdm.auto import tqdm

from harmlens.errors import HarmlensError
from harmlens.guards.latent.mlp_probe import MLPProbeConfig
from harmlens.guards.latent.span_scoring import probe_features


def train_probes(pos: torch.Tensor, neg: torch.Tensor, l2: float = 1e-2, steps: int = 100) -> dict[str, torch.Tensor]:
    """One L2-regularised logistic probe per layer on centred activations [n, n_layers, d] scaled to norm √d."""
    x = probe_features(torch.cat([pos, neg]))
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).double()
    weight = (torch.full_like(y, 0.5 / len(pos))).masked_fill(y == 0, 0.5 / len(neg))  # balanced classes
    mean = x.mean(0)
    x = x - mean
    w = torch.zeros(x.shape[1], x.shape[2], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = torch.einsum("nld,ld->nl", x, w) + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, y[:, None].expand_as(logits), reduction="none"
        )
        total = (loss * weight[:, None]).sum() + l2 * (w**2).sum() / 2
        total.backward()
        return total

    opt.step(closure)
    return {"probe_weight": w.detach().float(), "probe_bias": b.detach().float(), "probe_mean": mean.float()}


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
