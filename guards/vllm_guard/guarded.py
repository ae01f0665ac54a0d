"""VLLMGuardedModel: vLLM serves the model; the guard reads vLLM's own prefill (no extra forward, no second model).

Each request carries the positions the guard reads (SamplingParams.extra_args); the worker extension copies those rows
of the guard's layers while vLLM runs the prefill that generation needs. The driver steps the engine itself: once a
request's prefill is done (its first token appears) its rows are scored; a flagged request is aborted (at most the
tokens decoded meanwhile are thrown away, as the HF path throws away one) and answered with the refusal.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from harmlens.errors import HarmlensError
from harmlens.guards.latent.guarded import (
    DEFAULT_REFUSAL,
    GuardedReply,
    check_prompt_list,
    check_refusal,
    refusal_text,
)
from harmlens.guards.latent.input_policy import mark_injections
from harmlens.guards.latent.verdict import Verdict, one_line
from harmlens.guards.vllm_guard.reads import Read, VerdictCache, score_reads
from harmlens.guards.vllm_guard.worker import READ_KEY
from harmlens.runtime import (
    INSTALL_HINT,
    ChatPrompt,
    VLLMBackend,
    check_generation_args,
    cut_at_stop,
    is_conversation,
    remember_engine,
    vllm_available,
)

if TYPE_CHECKING:
    from harmlens.guards.latent.guard import LatentGuard

EXTENSION = "harmlens.guards.vllm_guard.worker.GuardWorkerExtension"


def guarded_engine(model: Any, **engine_kwargs: Any) -> VLLMBackend:
    """A vLLM engine over the model's weights with the guard's worker extension, eager (hooks cannot enter a compiled
    graph); reused by get_backend(model, 'vllm')."""
    if not vllm_available():
        raise HarmlensError(INSTALL_HINT)
    engine_kwargs = {"worker_extension_cls": EXTENSION, "enforce_eager": True, **engine_kwargs}
    return remember_engine(model, VLLMBackend(model, **engine_kwargs))


class VLLMGuardedModel:
    """Guarded chat generation served by vLLM; the same replies and verdicts as GuardedModel, read from vLLM's prefill."""

    def __init__(
        self,
        model: Any,
        guard: LatentGuard,
        *,
        refusal: str | Callable[[str, Verdict], str] = DEFAULT_REFUSAL,
        block: bool = True,
        engine: VLLMBackend | None = None,
        **engine_kwargs: Any,
    ) -> None:
        if guard.model is not model:
            guard.attach(model)
        check_refusal(refusal)
        self.model, self.guard, self.refusal, self.block = model, guard, refusal, block
        self.backend = engine if engine is not None else guarded_engine(model, **engine_kwargs)
        self.backend.llm.collective_rpc("hl_install", args=(guard.layers,))
        self.cache = VerdictCache()
        self.recomputed = 0  # prompts re-run because the prefix cache hid their positions

    def _refusal(self, instruction: str, verdict: Verdict) -> str:
        return refusal_text(self.refusal, instruction, verdict)

    def reset_prefix_cache(self) -> None:
        """Empty vLLM's prefix cache and the verdict cache together."""
        self.backend.llm.reset_prefix_cache()
        self.cache.clear()

    def generate(
        self,
        prompts: Sequence,
        *,
        max_new_tokens: int = 64,
        batch_size: int = 16,
        do_sample: bool = False,
        temperature: float = 1.0,
        seed: int = 0,
        progress: bool = False,
    ) -> list[GuardedReply]:
        """Replies (greedy by default); blocked prompts get the refusal. Prompts as GuardedModel.generate takes them;
        vLLM batches continuously (batch_size unused)."""
        check_prompt_list(prompts, images=False)
        check_generation_args(max_new_tokens, do_sample, temperature)
        out: list[GuardedReply | None] = [None] * len(prompts)
        reads: list[Read] = []
        for i, prompt in enumerate(prompts):
            try:
                chat, truncated = self.guard.prepare(prompt)
                reads.append(Read(i, chat, truncated, self.guard.select(chat, self.guard.width([chat]))))
            except Exception as exc:  # noqa: BLE001 - a bad prompt is answered on its own
                verdict = self.guard.failed(one_line(exc))
                text = getattr(prompt, "instruction", prompt) if isinstance(prompt, (str, ChatPrompt)) else ""
                refusal = self._refusal(str(text), verdict) if verdict.harmful else ""
                out[i] = GuardedReply(str(text), refusal, verdict, verdict.harmful)
        if reads:
            params = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, seed=seed)
            self._run(reads, params)
            verdicts = mark_injections(self.guard, [prompts[r.index] for r in reads], [r.verdict for r in reads])
            for r, verdict in zip(reads, verdicts):
                blocked = self.block and verdict.harmful
                text = self._refusal(r.prompt.instruction, verdict) if blocked else self._decode(r.tokens)
                out[r.index] = GuardedReply(r.prompt.instruction, text, verdict, blocked)
        return out  # type: ignore[return-value]

    def check(self, prompts: Sequence) -> list[Verdict]:
        """The guard's verdicts read from a one-token vLLM prefill (moderation without the HF model's forward)."""
        block, self.block = self.block, False
        try:
            return [r.verdict for r in self.generate(list(prompts), max_new_tokens=1)]
        finally:
            self.block = block

    def _decode(self, ids: list[int]) -> str:
        stops = self.backend.stops
        return self.model.tokenizer.decode(cut_at_stop(ids, stops), skip_special_tokens=True)

    def _params(self, read: Read, opts: dict) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        sample = opts["do_sample"]
        return SamplingParams(
            max_tokens=opts["max_new_tokens"],
            temperature=opts["temperature"] if sample else 0.0,
            seed=opts["seed"] + read.index if sample else None,
            stop_token_ids=self.backend.stops,
            detokenize=False,
            output_kind=RequestOutputKind.DELTA,
            extra_args={READ_KEY: sorted(set(read.positions))},
        )

    def _submit(self, read: Read, opts: dict, salt: str | None = None) -> tuple[str, str]:
        from vllm.inputs import TokensPrompt

        prompt = cast(Any, TokensPrompt)(prompt_token_ids=list(read.prompt.input_ids))  # total TypedDict in 0.32 stubs
        if salt is not None:  # a fresh salt misses vLLM's prefix cache: the prefill is recomputed and read
            prompt["cache_salt"] = salt
        ext = f"hl-{uuid.uuid4().hex}"
        return ext, self.backend.llm.llm_engine.add_request(ext, prompt, self._params(read, opts))

    def _run(self, reads: list[Read], opts: dict) -> None:
        """Step the engine until every request finished, deciding each one as soon as its prefill is done."""
        engine = self.backend.llm.llm_engine
        live: dict[str, tuple[Read, str]] = {}  # external id -> (read, internal id)
        undecided: set[str] = set()
        try:
            for r in reads:
                ext, internal = self._submit(r, opts)
                live[ext], r.tokens = (r, internal), []
                undecided.add(ext)
            while live:
                done_prefill, finished = [], []
                for output in engine.step():
                    if output.request_id not in live:
                        continue
                    r = live[output.request_id][0]
                    completions: Any = output.outputs
                    r.tokens.extend(completions[0].token_ids if completions else [])
                    if output.request_id in undecided:
                        done_prefill.append(output.request_id)
                    if output.finished:
                        finished.append(output.request_id)
                if done_prefill:
                    self._decide(done_prefill, live, undecided, opts)
                for ext in finished:
                    live.pop(ext, None)
        except BaseException:
            if live:
                engine.abort_request(list(live))
            raise
        for r in reads:
            if r.verdict is None:  # never decided: fail closed
                r.verdict = self.guard.failed("vLLM returned no prefill for this prompt", r.truncated)

    def _decide(self, exts: list[str], live: dict, undecided: set[str], opts: dict) -> None:
        """Score requests whose prefill is done; abort the blocked ones; re-run those the prefix cache hid."""
        engine = self.backend.llm.llm_engine
        (taken, *_) = self.backend.llm.collective_rpc("hl_take", args=([live[e][1] for e in exts],))
        ready, abort = [], []
        for ext in exts:
            r, internal = live[ext]
            undecided.discard(ext)
            r.rows = taken.get(internal, {})
            if not r.missing(self.guard.layers):
                ready.append(r)
                continue
            cached = self.cache.get(r.key)
            if cached is not None:
                r.verdict = dataclasses.replace(cached, truncated=r.truncated)
            elif r.attempt == 1:  # vLLM served the positions from its prefix cache: recompute them once
                abort.append(ext)
                r.attempt, r.tokens, self.recomputed = 2, [], self.recomputed + 1
                new, new_internal = self._submit(r, opts, salt=uuid.uuid4().hex)
                live[new] = (r, new_internal)
                undecided.add(new)
            else:
                reason = f"vLLM did not compute the guard's positions ({r.missing(self.guard.layers)[0]} missing)"
                r.verdict = self.guard.failed(reason, r.truncated, attempted=True)
        for r, verdict in zip(ready, score_reads(self.guard, ready)):
            r.verdict = verdict
            self.cache.put(r.key, verdict)
        for ext in exts:
            r = live[ext][0]
            if ext not in abort and r.verdict is not None and self.block and r.verdict.harmful:
                abort.append(ext)
        if abort:
            engine.abort_request(abort)
            for ext in abort:
                live.pop(ext, None)

    def __call__(self, prompts: Any, **kwargs: Any) -> str | list[str]:
        """Reply text(s) only: one for a string, ChatPrompt or message list, a list for a list of them."""
        if isinstance(prompts, (str, ChatPrompt)) or is_conversation(prompts):
            return self.generate([prompts], **kwargs)[0].text
        return [r.text for r in self.generate(prompts, **kwargs)]
