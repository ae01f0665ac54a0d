"""Several Latent Guards on one model scored from one forward pass: the union of their layers, each guard's own
positions (its variant's `select`), whatever the variants."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from harmlens.guards.latent.guard import LatentGuard
from harmlens.guards.latent.input_policy import mark_injections
from harmlens.guards.latent.verdict import one_line
from harmlens.runtime import ChatPrompt, iter_resid_batches

_RENDERING = ("system",)
_POLICY = ("max_length", "max_tokens", "on_long")


def can_share(guards: Sequence[LatentGuard]) -> bool:
    """Whether these guards render prompts the same way on the same model, so one read serves them all."""
    first = guards[0] if guards else None
    return first is not None and all(
        g.model is first.model
        and all(g.metadata.get(k) == first.metadata.get(k) for k in _RENDERING)
        and all(getattr(g, k) == getattr(first, k) for k in _POLICY)
        for g in guards
    )


def shared_check(guards: Sequence[LatentGuard], prompts: Sequence[str | ChatPrompt]) -> list[list]:
    """Each guard's verdicts (as guard.check gives them) from one forward per batch; a batch that fails is retried
    prompt by prompt, so only prompts that fail alone fail closed."""
    first = guards[0]
    out: list[list] = [[None] * len(prompts) for _ in guards]
    ready = []
    for i, prompt in enumerate(prompts):
        try:
            ready.append((i, *first.prepare(prompt)))
        except Exception as exc:  # noqa: BLE001 - a bad prompt fails closed on its own
            for k, g in enumerate(guards):
                out[k][i] = g.failed(one_line(exc))
    ready.sort(key=lambda r: len(r[1]))
    size = min(g.batch_size for g in guards)
    for start in range(0, len(ready), size):
        chunk = ready[start : start + size]
        try:
            per_guard = _score(guards, chunk)
        except Exception:  # noqa: BLE001 - retry alone, so one bad prompt fails alone
            per_guard = [list(v) for v in zip(*(_score_alone(guards, r) for r in chunk))]
        for k, verdicts in enumerate(per_guard):
            for (i, _, _), v in zip(chunk, verdicts):
                out[k][i] = v
    return [mark_injections(g, prompts, verdicts) for g, verdicts in zip(guards, out)]


def _score(guards: Sequence[LatentGuard], chunk: list) -> list[list]:
    """Verdicts of every guard for one batch of prepared prompts, each read at its own positions (guard.select),
    side by side in one forward over the union of their layers."""
    rendered: list[ChatPrompt] = [r[1] for r in chunk]
    layers = sorted({layer for g in guards for layer in g.layers})
    widths = [g.width(rendered) for g in guards]
    starts = [sum(widths[:k]) for k in range(len(guards))]

    def select(p: ChatPrompt) -> tuple[int, ...]:
        return tuple(pos for g, w in zip(guards, widths) for pos in g.select(p, w))

    _, acts = next(
        iter_resid_batches(
            guards[0]._require_model(), rendered, select, layers=layers, batch_size=len(rendered), progress=False
        )
    )
    truncated = [r[2] for r in chunk]
    verdicts = []
    for g, start, w in zip(guards, starts, widths):
        rows = torch.tensor([layers.index(layer) for layer in g.layers])
        verdicts.append(g.verdicts_from_acts(acts[:, rows, start : start + w], truncated))  # as g.read gives them
    return verdicts


def _score_alone(guards: Sequence[LatentGuard], item: tuple) -> list:
    try:
        return [v[0] for v in _score(guards, [item])]
    except Exception as exc:  # noqa: BLE001 - fail closed, say why
        return [g.failed(f"internal error: {one_line(exc)}", item[2], attempted=True) for g in guards]
