"""One model thread fed by a queue: requests from concurrent clients that arrive within a few ms share a batch."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harmlens.errors import HarmlensError
from harmlens.guards.latent.guard import Verdict, _one_line
from harmlens.guards.latent.guarded import GuardedModel
from harmlens.guards.latent.images import ImagePrompt, image_prompt
from harmlens.guards.serve.schemas import RequestError
from harmlens.runtime import ChatPrompt, GenerationConfig, HFBackend

if TYPE_CHECKING:
    from harmlens.guards.vllm_guard import VLLMGuardedModel


class ServiceError(Exception):
    """The model failed and the server runs fail-open: there is no reply to give (HTTP 503)."""


@dataclass(frozen=True)
class Reply:
    """What a chat request gets: text, verdict (None when unguarded), blocked, prompt and completion token counts."""

    text: str
    verdict: Verdict | None
    blocked: bool
    prompt_tokens: int
    completion_tokens: int
    finish: str  # stop | length | content_filter


@dataclass
class _Job:
    kind: str  # "chat" or "moderation"
    items: list[Any]  # one conversation (chat) or several (moderation)
    options: tuple = ()  # (max_tokens, temperature, seed) for chat: jobs with equal options share a generate call
    image: tuple[int, Any] | None = None  # chat on a VLM: (index of the user message with the image, the image)
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future | None = None
    queued: float = field(default_factory=time.perf_counter)


class Batcher:
    """Serialises model work on one thread; gathers up to max_batch requests arriving within wait_ms of the first."""

    def __init__(
        self,
        guarded: GuardedModel | VLLMGuardedModel,
        *,
        guarded_replies: bool = True,
        max_batch: int = 16,
        wait_ms: float = 5.0,
        max_queue: int = 256,
    ):
        self.guarded, self.use_guard, self.max_queue = guarded, guarded_replies, max_queue
        self.max_batch, self.wait = max_batch, wait_ms / 1000
        self.queue: queue.Queue[_Job | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="harmlens-model", daemon=True)
        self.batches, self.largest = 0, 0  # batches run and the largest (for /health and the load report)

    def start(self) -> Batcher:
        """Start the model thread."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """Finish the queued work and stop the thread."""
        self.queue.put(None)
        self.thread.join(timeout=60)

    async def chat(
        self, messages: list[dict], max_tokens: int, temperature: float, seed: int, image: tuple[int, Any] | None = None
    ) -> Reply:
        """The (guarded) reply to one conversation; `image` (message index, PIL image) on a VLM."""
        return await self._submit(_Job("chat", [messages], (max_tokens, temperature, seed), image=image))

    async def moderate(self, items: list[Any]) -> list[Verdict]:
        """The guard's verdicts for these prompts or conversations (one forward up to the last layer read)."""
        return await self._submit(_Job("moderation", items))

    async def _submit(self, job: _Job) -> Any:
        if self.queue.qsize() >= self.max_queue:
            raise RequestError(429, f"server busy: {self.max_queue} requests already queued; retry later", "busy")
        job.loop = asyncio.get_running_loop()
        job.future = job.loop.create_future()
        self.queue.put(job)
        return await job.future

    def _gather(self, first: _Job) -> list[_Job]:
        jobs, deadline = [first], time.perf_counter() + self.wait
        while len(jobs) < self.max_batch:
            left = deadline - time.perf_counter()
            try:
                job = self.queue.get(timeout=max(left, 0)) if left > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self.queue.put(None)
                break
            jobs.append(job)
        return jobs

    def _run(self) -> None:
        while (first := self.queue.get()) is not None:
            jobs = self._gather(first)
            self.batches, self.largest = self.batches + 1, max(self.largest, len(jobs))
            groups: dict[tuple, list[_Job]] = defaultdict(list)
            for job in jobs:
                groups[(job.kind, job.options)].append(job)
            for (kind, options), group in groups.items():
                try:
                    results = self._moderate(group) if kind == "moderation" else self._chat(group, *options)
                except Exception as exc:  # noqa: BLE001 - every waiting request hears about it
                    results = [self._failure(job, exc) for job in group]
                for job, result in zip(group, results):
                    self._resolve(job, result)

    def _resolve(self, job: _Job, result: Any) -> None:
        def done() -> None:
            if job.future is not None and not job.future.done():
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

        if job.loop is not None:
            job.loop.call_soon_threadsafe(done)

    def _failure(self, job: _Job, exc: Exception) -> Any:
        """Fail closed (refusal, the error in the verdict) unless the guard runs fail-open (then a 503)."""
        guard = self.guarded.guard
        if not guard.fail_closed:
            return ServiceError(f"internal error: {_one_line(exc)}")
        verdict = guard.failed(f"internal error: {_one_line(exc)}")
        if job.kind == "moderation":
            return [verdict] * len(job.items)
        instruction = job.items[0][-1]["content"]
        return Reply(self.guarded._refusal(instruction, verdict), verdict, True, 0, 0, "content_filter")

    def _moderate(self, group: list[_Job]) -> list[list[Verdict]]:
        check = getattr(self.guarded, "check", self.guarded.guard.check)  # vLLM: read from vLLM's prefill
        verdicts = check([item for job in group for item in job.items])
        out, start = [], 0
        for job in group:
            out.append(verdicts[start : start + len(job.items)])
            start += len(job.items)
        return out

    def _chat(self, group: list[_Job], max_tokens: int, temperature: float, seed: int) -> list[Any]:
        """Render on this thread (the tokenizer is not thread-safe), then one generate call for the group (image and
        text prompts in separate batches)."""
        guard, tok = self.guarded.guard, self.guarded.model.tokenizer
        out: list[Any] = [None] * len(group)
        ready: list[tuple[int, ChatPrompt | ImagePrompt]] = []
        for i, job in enumerate(group):
            try:
                if job.image is None:
                    ready.append((i, guard.prepare(job.items[0])[0]))
                else:
                    at, image = job.image
                    ready.append((i, image_prompt(guard, job.items[0], image, self._processor, at=at)))
            except HarmlensError as exc:  # e.g. longer than the context: the client's fault
                out[i] = RequestError(400, str(exc), param="messages")
        if not ready:
            return out
        prompts = [p for _, p in ready]
        config = GenerationConfig(
            max_new_tokens=max_tokens,
            batch_size=len(prompts),
            do_sample=temperature > 0,
            temperature=temperature or 1.0,
            seed=seed,
            progress=False,  # a server: no bars
        )
        if self.use_guard:
            replies = self.guarded.generate(prompts, config)
            for (i, prompt), reply in zip(ready, replies):
                n_new = 0 if reply.blocked else len(tok(reply.text, add_special_tokens=False)["input_ids"])
                finish = "content_filter" if reply.blocked else _finish(n_new, max_tokens)
                out[i] = Reply(reply.text, reply.verdict, reply.blocked, _length(prompt), n_new, finish)
            return out
        for (i, prompt), new in zip(ready, self._plain(prompts, config)):
            text = tok.decode(new, skip_special_tokens=True)
            out[i] = Reply(text, None, False, _length(prompt), len(new), _finish(len(new), max_tokens))
        return out

    @property
    def _processor(self) -> Any:
        return getattr(self.guarded, "processor", None)

    def _plain(self, prompts: list, config: GenerationConfig) -> list[list[int]]:
        """The unguarded baseline: the same rendering, plain generation (image prompts with the processor)."""
        backend = getattr(self.guarded, "backend", None)  # the vLLM guard's engine serves the baseline too
        if backend is not None:
            return backend.generate_ids(prompts, config)
        out: list[list[int]] = [[] for _ in prompts]
        for images in (False, True):
            idx = [j for j, p in enumerate(prompts) if isinstance(p, ImagePrompt) == images]
            if not idx:
                continue
            group = config.replace(batch_size=len(idx))
            if images:
                hf = HFBackend(self.guarded.model, self._processor)
                pics = [prompts[j].image for j in idx]
                ids = hf.generate_ids([prompts[j].prompt for j in idx], group, images=pics)
            else:
                ids = HFBackend(self.guarded.model).generate_ids([prompts[j] for j in idx], group)
            for j, new in zip(idx, ids):
                out[j] = new
        return out


def _length(prompt: ChatPrompt | ImagePrompt) -> int:
    """Prompt tokens for usage: an image counts as its placeholder token(s), not the tokens it expands to."""
    return len(prompt.prompt if isinstance(prompt, ImagePrompt) else prompt)


def _finish(n_new: int, max_tokens: int) -> str:
    return "length" if n_new >= max_tokens else "stop"
