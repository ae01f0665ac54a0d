"""The server's step loop over a StepBatch: chat requests join the running batch between decode steps, each new token
goes to its stream at once, and a flagged, finished, stopped or cancelled request leaves the batch at once."""

from __future__ import annotations

from typing import Any

from harmlens.errors import HarmlensError
from harmlens.guards.latent.guard_read import GuardRead
from harmlens.guards.latent.guarded import GuardedModel
from harmlens.guards.latent.input_policy import mark_injections
from harmlens.guards.serve.schemas import RequestError
from harmlens.guards.serve.streams import ChatStream, Reply
from harmlens.runtime import StepBatch, StepRequest


class StepDriver:
    """Feeds chat jobs into a StepBatch on the model thread and turns its rows into stream events."""

    def __init__(self, guarded: GuardedModel, use_guard: bool) -> None:
        self.guarded, self.use_guard = guarded, use_guard
        self.guard, self.tok = guarded.guard, guarded.model.tokenizer
        self.batch = self._new_batch()

    def _new_batch(self) -> StepBatch:
        layers = tuple(self.guard.layers) if self.use_guard else ()
        return StepBatch(self.guarded.model, read_layers=layers, decide=self._decide if self.use_guard else None)

    @property
    def running(self) -> int:
        """Rows now generating."""
        return len(self.batch.rows)

    def admit(self, jobs: list) -> None:
        """Render each job (a bad conversation gets its 400 alone), then prefill them together and send first tokens."""
        reqs = []
        for job in jobs:
            stream: ChatStream = job.stream
            if stream.cancelled:
                continue
            try:
                prompt, truncated = self.guard.prepare(job.items[0])
            except HarmlensError as exc:  # e.g. longer than the context: the client's fault
                stream.finish(RequestError(400, str(exc), param="messages"))
                continue
            stream.prompt, stream.truncated, stream.messages = prompt, truncated, job.items[0]
            max_tokens, temperature, seed, top_p = job.options
            positions = tuple(self.guard.select(prompt, 1)) if self.use_guard else ()
            reqs.append(StepRequest(list(prompt.input_ids), max_tokens, temperature, top_p, seed, positions, stream))
        if reqs:
            self.batch.admit(reqs)
            for r in reqs:
                self._update(r)

    def step(self) -> None:
        """Drop the rows whose clients left, then one decode step; every row's new text goes out now."""
        gone = [r for r in self.batch.rows if r.tag.cancelled]
        if gone:
            self.batch.drop(gone)
        for r in self.batch.step():
            self._update(r)

    def fail(self, exc: BaseException, failure: Any) -> None:
        """An exception in the model: every running row gets `failure(stream, exc)` and the batch starts afresh."""
        for r in self.batch.rows:
            r.tag.finish(failure(r.tag, exc))
        self.batch.clear()
        self.batch = self._new_batch()

    def _decide(self, reqs: list[StepRequest], acts: list) -> list[bool]:
        """The guard's verdicts from the newcomers' prefill (GuardRead: retried row by row, unread rows fail closed)."""
        streams = [r.tag for r in reqs]
        reader = GuardRead(self.guard, [(k, s.prompt, s.truncated, None) for k, s in enumerate(streams)], True)
        reader.decide(list(range(len(reqs))), acts)
        verdicts = [reader.verdict(k) for k in range(len(reqs))]
        verdicts = mark_injections(self.guard, [s.messages for s in streams], verdicts)
        for s, v in zip(streams, verdicts):
            s.verdict = v
        return [self.guarded.block and v.harmful for v in verdicts]

    def _update(self, r: StepRequest) -> None:
        stream: ChatStream = r.tag
        n_prompt = len(r.ids)
        if r.finish == "read":
            assert stream.verdict is not None  # set by _decide before it stopped the row
            refusal = self.guarded._refusal(stream.prompt.instruction, stream.verdict)
            stream.finish(Reply(refusal, stream.verdict, True, n_prompt, 0, "content_filter"))
            return
        text = self.tok.decode(r.new_ids, skip_special_tokens=True)
        if stream.feed(text, final=r.finish is not None):  # a stop string: the text before it, finish "stop"
            if r.finish is None:
                self.batch.drop([r])
            stream.finish(Reply(stream.sent, stream.verdict, False, n_prompt, len(r.new_ids), "stop"))
        elif r.finish is not None:
            finish = "length" if r.finish == "length" else "stop"
            stream.finish(Reply(text, stream.verdict, False, n_prompt, len(r.new_ids), finish))
