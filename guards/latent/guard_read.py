"""The guard as an engine's prefill read (PrefillRead): GuardedModel (hf engine) and VLLMGuardedModel (vllm engine)
both hand it to `generate_ids(..., read=...)`, so guarding is one adapter over either engine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from harmlens.errors import HarmlensError
from harmlens.guards.latent.verdict import Verdict, one_line
from harmlens.runtime import PrefillRead

if TYPE_CHECKING:
    from harmlens.guards.latent.guard import LatentGuard

UNREAD = "the guard hook never fired"


class GuardRead:
    """The guard as an engine's prefill reader: its positions per prompt, and verdicts that stop the flagged rows.

    `ready[k]` is (index, rendered prompt, truncated, EncodedImage or None); `unread` is the failure an engine gives
    for a prompt whose prefill it could not read (fail closed).
    """

    def __init__(self, guard: LatentGuard, ready: list, block: bool, unread: str = UNREAD) -> None:
        self.guard, self.ready, self.block, self.unread = guard, ready, block, unread
        self.verdicts: dict[int, Verdict] = {}

    def as_read(self) -> PrefillRead:
        """The PrefillRead the engine takes."""
        return PrefillRead(tuple(self.guard.layers), self.positions, self.decide)

    def positions(self, k: int) -> list[int]:
        """Positions of ready prompt k: the guard's own (a span unpadded), past the image for an image prompt."""
        _, prompt, _, image = self.ready[k]
        return list(image.positions) if image is not None else list(self.guard.select(prompt, 1))

    def decide(self, indices: Sequence[int], acts: list[torch.Tensor | None]) -> list[bool]:
        """Verdicts for these prompts (a failing batch is retried prompt by prompt; unread ones fail closed)."""
        readable = [(k, a) for k, a in zip(indices, acts) if a is not None]
        for k, a in zip(indices, acts):
            if a is None:
                self.verdicts[k] = self.guard.failed(self.unread, self.ready[k][2])
        if readable:
            try:
                for (k, _), verdict in zip(readable, self._verdicts(readable)):
                    self.verdicts[k] = verdict
            except Exception:  # noqa: BLE001 - retry row by row, so one bad row fails alone
                for k, a in readable:
                    self.verdicts[k] = self._alone(k, a)
        return [self.block and self.verdicts[k].harmful for k in indices]

    def verdict(self, k: int) -> Verdict:
        """Prompt k's verdict (fail-closed if the engine never asked)."""
        return self.verdicts.get(k) or self.guard.failed(self.unread, self.ready[k][2])

    def _verdicts(self, items: list[tuple[int, torch.Tensor]]) -> list[Verdict]:
        width = max(a.shape[1] for _, a in items)  # spans padded by repeating t_inst, the last position read
        acts = torch.stack([torch.cat([a, a[:, -1:].expand(-1, width - a.shape[1], -1)], dim=1) for _, a in items])
        verdicts = self.guard.verdicts_from_acts(acts, [self.ready[k][2] for k, _ in items])
        if len(verdicts) != len(items):
            raise HarmlensError(f"{len(verdicts)} verdicts for {len(items)} rows")
        return verdicts

    def _alone(self, k: int, acts: torch.Tensor) -> Verdict:
        try:
            return self._verdicts([(k, acts)])[0]
        except Exception as exc:  # noqa: BLE001 - fail closed, say why
            return self.guard.failed(f"internal error: {one_line(exc)}", self.ready[k][2], attempted=True)
