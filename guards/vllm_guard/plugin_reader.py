"""The guard's reader inside `vllm serve`'s worker: positions from each prompt's token ids, rows from vLLM's own
prefill (the runtime's worker hooks), verdicts as soon as a prefill is done, and the refusal a flagged request is forced
to emit token by token.

Runs in vLLM's worker process (created by GuardLogitsProcessor, handed the model runner by GuardWorkerExtension).
Positions come from the prompt's token ids, not from re-rendering: the prompt must end with the guard's chat-template
suffix (the assistant header vLLM's chat template adds), t_inst is the token before it, a span starts at token 0
(one turn; a conversation's span reads its whole history). A prompt that does not end so, a guard that raises, or
rows that were never computed give a fail-closed verdict (the refusal).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from harmlens.errors import HarmlensError
from harmlens.guards.latent.guard import LatentGuard
from harmlens.guards.latent.guard_read import GuardRead
from harmlens.guards.latent.guarded import DEFAULT_REFUSAL
from harmlens.guards.latent.verdict import Verdict
from harmlens.runtime import (
    ChatFormat,
    ChatPrompt,
    ReadCache,
    ReadWorkerExtension,
    read_key,
    rows_acts,
    system_from_metadata,
)

GUARD_ENV = "HARMLENS_GUARD"
REFUSAL_ENV = "HARMLENS_REFUSAL"
VERDICT_DIR_ENV = "HARMLENS_VERDICT_DIR"
FAIL_OPEN_ENV = "HARMLENS_FAIL_OPEN"
TIMING_ENV = "HARMLENS_GUARD_TIMING"  # "1": print the reader's own time per 256 steps to the server's log
NO_SUFFIX = "the prompt does not end with the guard's chat-template suffix (its t_inst cannot be located)"
HIDDEN = "vLLM's prefix cache hid the guard's positions and no earlier read of these tokens is cached"


def verdict_name(request_id: str) -> str:
    """File name of a request's verdict: a hash of vLLM's external request id (its internal id less the suffix)."""
    return hashlib.sha256(request_id.encode()).hexdigest()[:32] + ".json"


class GuardReader(ReadWorkerExtension):
    """One per worker: reads every request's guard positions and keeps each request's verdict and refusal progress."""

    def __init__(self, vllm_config: Any) -> None:
        path = os.environ.get(GUARD_ENV)
        if not path:
            raise HarmlensError(f"the harmlens guard plugin needs ${GUARD_ENV}=/path/to/guard.safetensors")
        mc = vllm_config.model_config
        if not mc.enforce_eager:
            raise HarmlensError("the harmlens guard plugin needs --enforce-eager (its hooks cannot enter a graph)")
        self.guard = LatentGuard.load(path, fail_closed=os.environ.get(FAIL_OPEN_ENV) != "1")
        meta, cfg = self.guard.metadata, mc.hf_text_config
        got = (getattr(cfg, "hidden_size", None), getattr(cfg, "num_hidden_layers", None))
        if got != (meta.get("d_model"), meta.get("n_layers")):
            raise HarmlensError(f"the guard was fitted on {meta.get('model')!r}, not on this model ({mc.model})")
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(mc.tokenizer, revision=mc.tokenizer_revision)
        fmt = ChatFormat.from_tokenizer(tok, system=system_from_metadata(meta))
        self.suffix = list(fmt.suffix_ids)
        refusal = os.environ.get(REFUSAL_ENV) or DEFAULT_REFUSAL
        eos = tok.eos_token_id
        self.forced = list(tok(refusal, add_special_tokens=False)["input_ids"]) + ([eos] if eos is not None else [])
        folder = os.environ.get(VERDICT_DIR_ENV)
        self.verdict_dir = Path(folder) if folder else None
        self.layers = self.guard.layers
        self.cache = ReadCache()
        self.read_pos: dict[str, list[int] | None] = {}  # req_id -> positions read (None: cannot be located)
        self.prompts: dict[str, list[int]] = {}
        self.verdicts: dict[str, Verdict] = {}
        self.progress: dict[str, int] = {}  # req_id -> refusal tokens forced so far (flagged requests)
        self.step: list[tuple[str, bool]] | None = None  # this forward's (req_id, emits a token) per logits row
        self.model_runner: Any = None
        self.counts = {"allowed": 0, "flagged": 0, "failed": 0, "cached": 0}
        self.spent = {"prepare": 0.0, "hooks": 0.0, "decide": 0.0, "force": 0.0, "steps": 0.0}
        self.timing = os.environ.get(TIMING_ENV) == "1"

    def attach(self, runner: Any) -> None:
        """Hook the runner's model (once its weights are loaded)."""
        self.model_runner = runner
        self.hl_install(self.layers)

    def positions_of(self, ids: list[int]) -> list[int] | None:
        """The guard's positions in a prompt's token ids (None: no chat-template suffix at its end)."""
        n, s = len(ids), len(self.suffix)
        if not self.suffix or n < s + 1 or list(ids[n - s :]) != self.suffix:
            return None
        t = n - s - 1
        prompt = ChatPrompt("", "", tuple(ids), t, tuple(range(t + 1, n)))
        return sorted(set(self.guard.select(prompt, 1)))

    def _hl_prepare(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """Once per forward: which rows hold positions a request still needs, and which requests emit a token."""
        t0 = time.perf_counter()
        self._plan(args, kwargs)
        self.spent["prepare"] += time.perf_counter() - t0

    def _hl_hook(self, layer: int, fused: bool):
        hook = super()._hl_hook(layer, fused)

        def timed(module: torch.nn.Module, inputs: tuple, output: Any) -> None:
            t0 = time.perf_counter()
            hook(module, inputs, output)
            self.spent["hooks"] += time.perf_counter() - t0

        return timed if self.timing else hook

    def _plan(self, args: tuple, kwargs: dict) -> None:
        self._hl_plan, runner = [], self.model_runner
        batch = runner.input_batch
        req_ids = list(batch.req_ids)[: batch.num_reqs]
        self._forget(set(self.read_pos) - set(runner.requests))  # finished or aborted requests
        if not req_ids:
            self.step = None
            return None
        positions = kwargs["positions"] if "positions" in kwargs else args[1]
        offsets = runner.query_start_loc.cpu[: len(req_ids) + 1].tolist()
        flat = positions[: offsets[-1]].tolist()
        step = []
        for i, rid in enumerate(req_ids):
            if rid not in self.read_pos:
                ids = list(runner.requests[rid].prompt_token_ids or [])
                self.prompts[rid], self.read_pos[rid] = ids, self.positions_of(ids)
                self._hl_wants[rid] = set(self.read_pos[rid] or ())
                self._hl_rows[rid] = {}
            pos = flat[offsets[i] : offsets[i + 1]]
            self._hl_plan_request(rid, pos, offsets[i], positions.device)
            step.append((rid, bool(pos) and pos[-1] + 1 >= int(batch.num_tokens_no_spec[i])))
        self.step = step
        return None

    def _forget(self, gone: Iterable[str]) -> None:
        for rid in gone:
            for store in (self.read_pos, self.prompts, self.verdicts, self.progress, self._hl_rows, self._hl_wants):
                store.pop(rid, None)

    def decide(self, rids: list[str]) -> None:
        """Verdicts of requests whose prefill is done: rows read now, else rows of the same tokens read earlier."""
        acts: list[torch.Tensor | None] = []
        early: dict[int, Verdict] = {}
        source: list[str | None] = []
        for k, rid in enumerate(rids):
            pos, rows = self.read_pos.get(rid), self._hl_rows.pop(rid, {})
            self._hl_wants.pop(rid, None)
            if pos is None:
                early[k] = self.guard.failed(NO_SUFFIX)
                acts.append(None)
                source.append(None)
                continue
            host = {f"{layer}:{p}": t.cpu().numpy().tobytes() for (layer, p), t in rows.items()}
            got, key = rows_acts(host, self.layers, pos), read_key(self.prompts[rid], self.layers, pos)
            if got is not None:
                self.cache.put(key, got)
                source.append("prefill")
            else:
                got = self.cache.get(key)
                self.counts["cached"] += got is not None
                source.append(None if got is None else "read-cache")
            acts.append(got)
        reader = GuardRead(self.guard, [(k, None, False, None) for k in range(len(rids))], True, HIDDEN)
        reader.decide(list(range(len(rids))), acts)
        for k, rid in enumerate(rids):
            verdict = early.get(k) or reader.verdict(k)
            self.verdicts[rid] = verdict
            self.counts["failed" if verdict.error else "flagged" if verdict.harmful else "allowed"] += 1
            self._publish(rid, verdict, source[k])

    def _publish(self, rid: str, verdict: Verdict, rows: str | None) -> None:
        """Write the verdict where the API server's middleware finds it (by vLLM's external request id)."""
        if self.verdict_dir is None:
            return
        external = rid.rsplit("-", 1)[0]
        record = {"request_id": external, "flagged": bool(verdict.harmful), "rows": rows, **verdict.to_dict()}
        path = self.verdict_dir / verdict_name(external)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(path)

    def force(self, logits: torch.Tensor) -> torch.Tensor:
        """Decide the requests whose prefill ended in this step, then force each flagged request's next refusal
        token (the refusal, then EOS); allowed rows are untouched."""
        t0 = time.perf_counter()
        step, self.step = self.step, None
        if step is None or logits.shape[0] != len(step):  # a dummy run (profiling, warm-up)
            return logits
        todo = [rid for rid, emits in step if emits and rid not in self.verdicts]
        if todo:
            self.decide(todo)
            self.spent["decide"] += time.perf_counter() - t0
        for i, (rid, emits) in enumerate(step):
            verdict = self.verdicts.get(rid)
            if emits and verdict is not None and verdict.harmful and self.forced:
                k = self.progress.get(rid, 0)
                logits[i].fill_(float("-inf"))
                logits[i, self.forced[min(k, len(self.forced) - 1)]] = 0.0
                self.progress[rid] = k + 1
        self.spent["force"] += time.perf_counter() - t0
        self.spent["steps"] += 1
        if self.timing and self.spent["steps"] % 256 == 0:
            print(f"harmlens guard timing: {self.spent} counts={self.counts}", file=sys.stderr, flush=True)
        return logits
