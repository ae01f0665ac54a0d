"""One model thread fed by a queue. Text chats run a step loop (continuous batching): requests join the running batch
between decode steps and every token streams out at once; images, the vLLM-guarded model and models the step loop
cannot run go through whole-batch generation (guards/serve/static.py)."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harmlens.guards.latent.guard import Verdict, _one_line
from harmlens.guards.latent.guarded import GuardedModel
from harmlens.guards.serve.continuous import StepDriver
from harmlens.guards.serve.schemas import RequestError
from harmlens.guards.serve.static import static_chat
from harmlens.guards.serve.streams import ChatStream, Reply, ServiceError
from harmlens.runtime import steppable

if TYPE_CHECKING:
    from harmlens.guards.vllm_guard import VLLMGuardedModel

__all__ = ["Batcher", "Reply", "ServiceError"]


@dataclass
class _Job:
    kind: str  # "chat" or "moderation"
    items: list[Any]  # one conversation (chat) or several (moderation)
    options: tuple = ()  # chat: (max_tokens, temperature, seed, top_p)
    image: tuple[int, Any] | None = None  # chat on a VLM: (index of the user message with the image, the image)
    stream: ChatStream | None = None  # chat
    loop: asyncio.AbstractEventLoop | None = None  # moderation
    future: asyncio.Future | None = None  # moderation
    queued: float = field(default_factory=time.perf_counter)


class Batcher:
    """Serialises model work on one thread: up to max_batch chats generate together; newcomers wait up to wait_ms
    for company when the model is idle and join between decode steps when it is not."""

    def __init__(
        self,
        guarded: GuardedModel | VLLMGuardedModel,
        *,
        guarded_replies: bool = True,
        max_batch: int = 16,
        wait_ms: float = 5.0,
        max_queue: int = 256,
        continuous: bool = True,
    ):
        self.guarded, self.use_guard, self.max_queue = guarded, guarded_replies, max_queue
        self.max_batch, self.wait, self.continuous = max_batch, wait_ms / 1000, continuous
        self.queue: queue.Queue[_Job | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="harmlens-model", daemon=True)
        self.batches, self.largest, self.steps = 0, 0, 0  # prefills run, most rows at once, decode steps (/health)
        self.driver: StepDriver | None = None

    def start(self) -> Batcher:
        """Start the model thread."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread (running requests end with a 503) ."""
        self.queue.put(None)
        self.thread.join(timeout=60)

    def stream(
        self,
        messages: list[dict],
        max_tokens: int,
        temperature: float,
        seed: int,
        image: tuple[int, Any] | None = None,
        *,
        top_p: float = 1.0,
        stop: tuple[str, ...] = (),
    ) -> ChatStream:
        """Queue one conversation; its ChatStream yields text deltas as they are generated, then the Reply."""
        self._check_room()
        stream = ChatStream(asyncio.get_running_loop(), stop)
        self.queue.put(_Job("chat", [messages], (max_tokens, temperature, seed, top_p), image, stream))
        return stream

    async def chat(
        self, messages: list[dict], max_tokens: int, temperature: float, seed: int, image: tuple[int, Any] | None = None
    ) -> Reply:
        """The (guarded) reply to one conversation; `image` (message index, PIL image) on a VLM."""
        stream = self.stream(messages, max_tokens, temperature, seed, image)
        try:
            return await stream.reply()
        finally:
            stream.cancelled = True  # a no-op once done; frees the slot if the caller went away

    async def moderate(self, items: list[Any]) -> list[Verdict]:
        """The guard's verdicts for these prompts or conversations (one forward up to the last layer read)."""
        self._check_room()
        loop = asyncio.get_running_loop()
        job = _Job("moderation", items, loop=loop, future=loop.create_future())
        self.queue.put(job)
        return await job.future  # type: ignore[misc]

    def _check_room(self) -> None:
        if self.queue.qsize() >= self.max_queue:
            raise RequestError(429, f"server busy: {self.max_queue} requests already queued; retry later", "busy")

    def _take(self, idle: bool) -> list[_Job] | None:
        """Queued jobs for the free slots: idle, wait for one and up to wait_ms for more; busy, only what is there."""
        free = self.max_batch - (self.driver.running if self.driver else 0)
        jobs: list[_Job] = []
        deadline = time.perf_counter() + self.wait
        while len(jobs) < max(free, 1 if idle else 0):
            try:
                if idle and not jobs:
                    job = self.queue.get()
                else:
                    left = deadline - time.perf_counter() if idle else 0
                    job = self.queue.get(timeout=left) if left > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return None
            jobs.append(job)
        return jobs

    def _run(self) -> None:
        if self.continuous and isinstance(self.guarded, GuardedModel) and steppable(self.guarded.model):
            self.driver = StepDriver(self.guarded, self.use_guard)
        while (jobs := self._take(not (self.driver and self.driver.running))) is not None:
            groups: dict[tuple, list[_Job]] = defaultdict(list)
            for job in jobs:
                stepped = job.kind == "chat" and job.image is None and self.driver is not None
                groups[("step",) if stepped else (job.kind, job.options)].append(job)
            for key, group in groups.items():
                try:
                    if key[0] == "step":
                        self.batches += 1
                        assert self.driver is not None
                        self.driver.admit(group)
                        continue
                    results = self._moderate(group) if key[0] == "moderation" else self._static(group)
                except Exception as exc:  # noqa: BLE001 - every waiting request hears about it
                    results = [self._failure(job, exc) for job in group]
                for job, result in zip(group, results):
                    self._resolve(job, result)
            self._step()
        if self.driver is not None:
            self.driver.fail(ServiceError("server shutting down"), lambda stream, exc: exc)

    def _step(self) -> None:
        if self.driver is None or not self.driver.running:
            return
        self.largest = max(self.largest, self.driver.running)
        try:
            self.driver.step()
            self.steps += 1
        except Exception as exc:  # noqa: BLE001 - the running requests fail closed (or 503 fail-open)
            self.driver.fail(exc, lambda stream, e: self._chat_failure(stream.messages, e))

    def _static(self, group: list[_Job]) -> list[Any]:
        self.batches, self.largest = self.batches + 1, max(self.largest, len(group))
        return static_chat(self.guarded, self.use_guard, group, group[0].options)

    def _resolve(self, job: _Job, result: Any) -> None:
        if job.stream is not None:
            if isinstance(result, Reply) and job.stream.stop:  # whole-batch path: stop strings cut afterwards
                if job.stream.feed(result.text, final=True):
                    result = Reply(
                        job.stream.sent,
                        result.verdict,
                        result.blocked,
                        result.prompt_tokens,
                        result.completion_tokens,
                        "stop",
                    )
            job.stream.finish(result)
            return

        def done() -> None:
            if job.future is not None and not job.future.done():
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

        if job.loop is not None:
            job.loop.call_soon_threadsafe(done)

    def _failure(self, job: _Job, exc: Exception) -> Any:
        if job.kind == "moderation":
            guard = self.guarded.guard
            if not guard.fail_closed:
                return ServiceError(f"internal error: {_one_line(exc)}")
            return [guard.failed(f"internal error: {_one_line(exc)}")] * len(job.items)
        return self._chat_failure(job.items[0], exc)

    def _chat_failure(self, messages: list[dict], exc: BaseException) -> Any:
        """Fail closed (refusal, the error in the verdict) unless the guard runs fail-open (then a 503)."""
        guard = self.guarded.guard
        if not guard.fail_closed:
            return ServiceError(f"internal error: {_one_line(exc)}")
        verdict = guard.failed(f"internal error: {_one_line(exc)}")
        instruction = messages[-1]["content"] if messages else ""
        return Reply(self.guarded._refusal(instruction, verdict), verdict, True, 0, 0, "content_filter")

    def _moderate(self, group: list[_Job]) -> list[list[Verdict]]:
        check = getattr(self.guarded, "check", self.guarded.guard.check)  # vLLM: read from vLLM's prefill
        verdicts = check([item for job in group for item in job.items])
        out, start = [], 0
        for job in group:
            out.append(verdicts[start : start + len(job.items)])
            start += len(job.items)
        return out
