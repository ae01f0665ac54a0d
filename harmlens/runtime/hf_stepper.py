"""Continuous batching on the HF weights: one running batch with one KV cache; requests join between decode steps.

Why: a server that runs `generate` per batch makes every request wait for the batch's longest reply and cannot stream.
`StepBatch` owns the running rows (a left-padded DynamicCache and its attention mask): `admit` prefills newcomers as
one left-padded batch (reading the prefill for a `PrefillRead`-style decider, the guard, in the same forward), samples
their first token and concatenates their cache rows to the running ones; `step` runs one decode forward for every row;
finished, stopped and dropped rows leave the cache at once (and all-padding columns are cut from the left). Runs on the
plain HF view with harmlens's own hooks (steering, ablation, a guard's read), as the hf engine does.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from harmlens.errors import HarmlensError
from harmlens.runtime.compat import ensure_kv_cache_compat
from harmlens.runtime.devices import input_device
from harmlens.runtime.engine_api import PrefillRead
from harmlens.runtime.hf_engine import _AllStopped, _BatchRead
from harmlens.runtime.hooks import add_hooks, runnable_model
from harmlens.runtime.sampling import sample_rows
from harmlens.runtime.token_prompts import left_pad, pad_id, stop_token_ids

Decider = Callable[[list["StepRequest"], list[torch.Tensor | None]], Sequence[bool]]


@dataclass(eq=False)
class StepRequest:
    """One generation in a StepBatch: prompt ids, limits, sampling and the positions its prefill read takes; the batch
    fills `new_ids` (stop token excluded) and sets `finish` to stop | length | read (the reader stopped it) | dropped."""

    ids: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    positions: tuple[int, ...] = ()
    tag: Any = None  # the caller's handle (a server's stream)
    new_ids: list[int] = field(default_factory=list)
    finish: str | None = None
    generator: torch.Generator | None = None


def _pad_left(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    if x.shape[dim] == width:
        return x
    shape = list(x.shape)
    shape[dim] = width - x.shape[dim]
    return torch.cat([x.new_zeros(shape), x], dim=dim)


def _layers(cache: Any) -> list[Any]:
    layers = list(getattr(cache, "layers", []))
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        raise HarmlensError("continuous batching needs a full-attention DynamicCache (no sliding-window layers)")
    return layers


class StepBatch:
    """A running batch on the model's HF weights that requests join and leave between decode steps.

    `read_layers` + `decide(requests, acts)` read each newcomer's prefill at its `positions` (acts as PrefillRead
    gives them) and answer which to stop now; `hooks` (a context-manager factory, e.g. steering) is entered while rows
    run. Not thread-safe: one thread drives admit/step/drop.
    """

    def __init__(
        self,
        model: Any,
        *,
        read_layers: Sequence[int] = (),
        decide: Decider | None = None,
        hooks: Callable[[], AbstractContextManager] | None = None,
    ) -> None:
        ensure_kv_cache_compat()
        self.model, self.read_layers, self.decide, self.hooks = model, tuple(read_layers), decide, hooks
        tok = model.tokenizer
        self.stops, self.pad = set(stop_token_ids(model, tok)), pad_id(tok)
        self.rows: list[StepRequest] = []
        self.cache: Any = None
        self.mask: torch.Tensor | None = None
        self.pending: torch.Tensor | None = None  # each row's last sampled token, not yet in the cache
        self.steps = 0
        self._stack: ExitStack | None = None
        self._runner: Any = None

    @property
    def running(self) -> list[StepRequest]:
        """The rows now generating."""
        return list(self.rows)

    def _enter(self) -> Any:
        if self._stack is None:
            self._stack = ExitStack()
            self._stack.enter_context(nullcontext() if self.hooks is None else self.hooks())
        return self._stack

    def _release(self) -> None:
        if not self.rows:
            self.cache = self.mask = self.pending = None
            if self._stack is not None:
                self._stack.close()
                self._stack = None

    def _forward(self, runner: Any, ids: torch.Tensor, mask: torch.Tensor, cache: Any, prefill: bool) -> Any:
        pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1] :]
        kwargs: dict[str, Any] = dict(attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
        if prefill and "logits_to_keep" in inspect.signature(runner.forward).parameters:
            kwargs["logits_to_keep"] = 1
        return runner(input_ids=ids, **kwargs)

    def admit(self, reqs: Sequence[StepRequest]) -> list[StepRequest]:
        """Prefill `reqs` as one batch (read + decide when set), sample their first tokens and join the survivors to
        the running rows; returns the requests that got a token (the others are finished: read, stop or length)."""
        if not reqs:
            return []
        self._enter()
        runner = self._runner = runnable_model(self.model)
        device = input_device(runner)
        enc = {k: v.to(device) for k, v in left_pad([r.ids for r in reqs], self.pad).items()}
        read = batch_read = None
        if self.decide is not None and self.read_layers:
            decide = self.decide
            read = PrefillRead(
                self.read_layers, lambda i: reqs[i].positions, lambda idx, acts: decide([reqs[i] for i in idx], acts)
            )
            offsets = (enc["attention_mask"] == 0).sum(dim=1)
            batch_read = _BatchRead(read, self.model, list(range(len(reqs))), offsets)
        hooks: AbstractContextManager = (
            nullcontext() if batch_read is None else add_hooks(self.model, batch_read.hooks())
        )
        cache = DynamicCache()
        try:
            with torch.no_grad(), hooks:
                out = self._forward(runner, enc["input_ids"], enc["attention_mask"], cache, prefill=True)
            logits = out.logits[:, -1]
        except _AllStopped:
            logits = None
        except BaseException:
            self._release()
            raise
        stopped = batch_read.finish() if batch_read is not None else [False] * len(reqs)
        for r, stop in zip(reqs, stopped):
            r.generator = torch.Generator(device=device).manual_seed(r.seed % (1 << 63))
            if stop:
                r.finish = "read"
        if logits is None or all(stopped):
            self._release()
            return []
        live = [k for k, r in enumerate(reqs) if r.finish is None]
        tokens = sample_rows(logits[live], [reqs[k] for k in live])
        keep = [k for k, t in zip(live, tokens) if self._accept(reqs[k], t)]
        if keep:
            self._join(out.past_key_values, enc["attention_mask"], keep, [reqs[k] for k in keep], tokens, live)
        self._release()
        return [reqs[k] for k in live]

    def _join(self, cache: Any, mask: torch.Tensor, keep: list[int], reqs: list, tokens: list, live: list) -> None:
        index = torch.tensor(keep, device=mask.device)
        new_layers = [
            (
                layer.keys.index_select(0, index.to(layer.keys.device)),
                layer.values.index_select(0, index.to(layer.values.device)),
            )
            for layer in _layers(cache)
        ]
        new_mask = mask[index]
        new_pending = torch.tensor([tokens[live.index(k)] for k in keep], device=mask.device)
        if self.rows:
            assert self.mask is not None and self.pending is not None
            width = max(new_mask.shape[1], self.mask.shape[1])
            old_layers = [(layer.keys, layer.values) for layer in _layers(self.cache)]
            new_layers = [
                (
                    torch.cat([_pad_left(ok, width, 2), _pad_left(nk, width, 2)]),
                    torch.cat([_pad_left(ov, width, 2), _pad_left(nv, width, 2)]),
                )
                for (ok, ov), (nk, nv) in zip(old_layers, new_layers)
            ]
            new_mask = torch.cat([_pad_left(self.mask, width, 1), _pad_left(new_mask, width, 1)])
            new_pending = torch.cat([self.pending, new_pending])
        self.cache = DynamicCache(ddp_cache_data=new_layers)
        self.mask, self.pending, self.rows = new_mask, new_pending, self.rows + reqs

    def step(self) -> list[StepRequest]:
        """One decode forward for every running row; returns the rows that got a token (finished ones have left)."""
        if not self.rows:
            return []
        assert self.mask is not None and self.pending is not None
        mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=1)
        with torch.no_grad():
            out = self._forward(self._runner, self.pending[:, None], mask, self.cache, prefill=False)
        self.cache, self.mask, self.steps = out.past_key_values, mask, self.steps + 1
        rows = list(self.rows)
        tokens = sample_rows(out.logits[:, -1], rows)
        self.pending = torch.tensor(tokens, device=mask.device)
        for r, t in zip(rows, tokens):
            self._accept(r, t)
        self._keep([k for k, r in enumerate(rows) if r.finish is None])
        return rows

    def drop(self, reqs: Sequence[StepRequest]) -> None:
        """Remove these rows now (cancelled, a stop string seen); their finish becomes 'dropped' unless already set."""
        gone = {id(r) for r in reqs}
        for r in self.rows:
            if id(r) in gone and r.finish is None:
                r.finish = "dropped"
        self._keep([k for k, r in enumerate(self.rows) if id(r) not in gone])

    def clear(self) -> None:
        """Drop every row and the cache (after a failure)."""
        for r in self.rows:
            r.finish = r.finish or "dropped"
        self.rows = []
        self._release()

    def _keep(self, keep: list[int]) -> None:
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[k] for k in keep]
        if not self.rows:
            self._release()
            return
        assert self.mask is not None and self.pending is not None
        index = torch.tensor(keep, device=self.mask.device)
        mask = self.mask[index]
        first = int((mask.sum(0) > 0).nonzero()[0])  # columns every remaining row pads are cut
        layers = [
            (
                layer.keys.index_select(0, index.to(layer.keys.device))[:, :, first:],
                layer.values.index_select(0, index.to(layer.values.device))[:, :, first:],
            )
            for layer in _layers(self.cache)
        ]
        self.cache = DynamicCache(ddp_cache_data=layers)
        self.mask, self.pending = mask[:, first:], self.pending[index]

    def _accept(self, r: StepRequest, token: int) -> bool:
        """Record a sampled token; False when the row is finished (a stop token, or max_new_tokens reached)."""
        if token in self.stops:
            r.finish = "stop"
            return False
        r.new_ids.append(token)
        if len(r.new_ids) >= r.max_new_tokens:
            r.finish = "length"
            return False
        return True


def steppable(model: Any) -> bool:
    """Whether StepBatch can run this model: a two-token forward must leave a full-attention DynamicCache."""
    runner = runnable_model(model)
    ids = torch.tensor([[pad_id(model.tokenizer)] * 2], device=input_device(runner))
    try:
        with torch.no_grad():
            out = runner(input_ids=ids, past_key_values=DynamicCache(), use_cache=True)
        _layers(out.past_key_values)
    except Exception:  # noqa: BLE001 - any model we cannot step falls back to whole-batch generation
        return False
    return True
