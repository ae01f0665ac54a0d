"""The one loop that runs generation on vLLM: requests added to vLLM's engine and stepped to the end (what LLM.generate
does inside), deciding a prefill read as soon as each request's prefill is done. Only VLLMBackend.generate_ids runs it.

With a read, each request carries its positions (SamplingParams.extra_args); the worker extension copies those rows
while vLLM runs the prefill that generation needs. When a request's first token appears its prefill is done: its rows
are fetched (`hl_take`) and the reader decides; a request it stops is aborted (at most the tokens decoded meanwhile
are thrown away, as the HF engine throws away one) and comes back empty. Rows vLLM's prefix cache hid are served from
the engine's read cache, else the request is re-run once with a fresh cache_salt (a salt misses the prefix cache).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, cast

import torch
from tqdm.auto import tqdm

from harmlens.errors import HarmlensError
from harmlens.runtime.engine_api import GenerationConfig, PrefillRead
from harmlens.runtime.token_prompts import cut_at_stop
from harmlens.runtime.vllm_reads import read_key, rows_acts
from harmlens.runtime.vllm_worker import READ_KEY

if TYPE_CHECKING:
    from harmlens.runtime.vllm_engine import VLLMBackend


class StepRun:
    """One generate_ids call: every prompt submitted at once, the engine stepped until each request finished."""

    def __init__(self, backend: VLLMBackend, seqs: list[list[int]], config: GenerationConfig, read: PrefillRead | None):
        self.backend, self.seqs, self.config, self.read = backend, seqs, config, read
        self.engine = backend.llm.llm_engine
        self.tokens: list[list[int]] = [[] for _ in seqs]
        self.stopped = [False] * len(seqs)
        self.decided = [read is None] * len(seqs)
        self.attempts = [0] * len(seqs)
        self.live: dict[str, tuple[int, str]] = {}  # our request id -> (prompt index, vLLM's internal id)
        self.positions = [self._positions(i) for i in range(len(seqs))] if read is not None else []
        self.bar = tqdm(total=len(seqs), desc="generating (vllm)", disable=not config.progress, unit="prompt")

    def _positions(self, i: int) -> list[int]:
        assert self.read is not None
        pos = [int(p) for p in self.read.positions(i)]
        if not pos or min(pos) < 0 or max(pos) >= len(self.seqs[i]):
            raise HarmlensError(f"prefill read positions of prompt {i} must lie in 0..{len(self.seqs[i]) - 1}")
        return pos

    def _params(self, i: int) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        c = self.config
        return SamplingParams(
            max_tokens=c.max_new_tokens,
            temperature=c.temperature if c.do_sample else 0.0,
            top_p=c.top_p if c.do_sample else 1.0,
            seed=c.seed + i if c.do_sample else None,
            stop_token_ids=self.backend.stops,
            detokenize=False,  # harmlens decodes with the model's tokenizer
            output_kind=RequestOutputKind.FINAL_ONLY if self.read is None else RequestOutputKind.DELTA,
            extra_args={READ_KEY: sorted(set(self.positions[i]))} if self.read is not None else None,
        )

    def _submit(self, i: int, salt: str | None = None) -> None:
        from vllm.inputs import TokensPrompt

        prompt = cast(Any, TokensPrompt)(prompt_token_ids=self.seqs[i])  # a total TypedDict in vLLM's stubs
        if salt is not None:
            prompt["cache_salt"] = salt
        ext = f"hl-{uuid.uuid4().hex}"
        self.live[ext] = (i, self.engine.add_request(ext, prompt, self._params(i)))
        self.attempts[i] += 1
        self.tokens[i] = []

    def run(self) -> list[list[int]]:
        """New token ids per prompt, cut at the first stop; stopped prompts empty."""
        try:
            for i in range(len(self.seqs)):
                self._submit(i)
            while self.live:
                prefilled, finished = [], set()
                for output in self.engine.step():
                    entry = self.live.get(output.request_id)
                    if entry is None:  # another caller's request
                        continue
                    completions: Any = output.outputs
                    self.tokens[entry[0]].extend(completions[0].token_ids if completions else [])
                    if not self.decided[entry[0]]:
                        prefilled.append(output.request_id)
                    if output.finished:
                        finished.add(output.request_id)
                if prefilled:
                    self._decide(prefilled, finished)
                for ext in finished:
                    if self.live.pop(ext, None) is not None:
                        self.bar.update(1)
        except BaseException:
            if self.live:
                self.engine.abort_request(list(self.live))
            raise
        finally:
            self.bar.close()
        unread = [i for i, done in enumerate(self.decided) if not done]
        if unread:  # vLLM returned no prefill for them: the reader is told so
            self._answer(unread, [None] * len(unread))
        stops = self.backend.stops
        return [[] if stop else cut_at_stop(ids, stops) for ids, stop in zip(self.tokens, self.stopped)]

    def _decide(self, exts: list[str], finished: set[str]) -> None:
        """Rows of requests whose prefill is done to the reader (re-running those the prefix cache hid); abort the
        requests it stops."""
        assert self.read is not None
        layers, cache = self.read.layers, self.backend.read_cache
        (taken, *_) = self.backend.llm.collective_rpc("hl_take", args=([self.live[e][1] for e in exts],))
        asked: list[tuple[str, int]] = []
        acts: list[torch.Tensor | None] = []
        rerun: list[str] = []
        for ext in exts:
            i, internal = self.live[ext]
            key = read_key(self.seqs[i], layers, self.positions[i])
            got = rows_acts(taken.get(internal, {}), layers, self.positions[i])
            if got is not None:
                cache.put(key, got)
            else:
                got = cache.get(key)
            if got is None and self.attempts[i] == 1:  # vLLM served the positions from its prefix cache
                rerun.append(ext)
                continue
            asked.append((ext, i))
            acts.append(got)
        for ext in rerun:
            i = self.live.pop(ext)[0]
            self.backend.recomputed += 1
            self._submit(i, salt=uuid.uuid4().hex)
        stop = self._answer([i for _, i in asked], acts) if asked else []
        stopped = [ext for (ext, _), s in zip(asked, stop) if s]
        for ext in stopped:
            self.live.pop(ext)
            self.bar.update(1)
        abort = [ext for ext in rerun + stopped if ext not in finished]
        if abort:
            self.engine.abort_request(abort)

    def _answer(self, indices: list[int], acts: list[torch.Tensor | None]) -> list[bool]:
        """The reader's decision for these prompts (one call), recorded."""
        assert self.read is not None
        stop = [bool(s) for s in self.read.decide(indices, acts)]
        if len(stop) != len(indices):
            raise HarmlensError(f"the prefill reader answered for {len(stop)} of {len(indices)} prompts")
        for i, s in zip(indices, stop):
            self.decided[i], self.stopped[i] = True, s
        return stop
