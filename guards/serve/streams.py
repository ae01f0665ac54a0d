"""One chat request's life on the server: text deltas as tokens arrive (stop strings cut, OpenAI-style), then its end.

The model thread feeds a ChatStream (token ids, the verdict, the finish); the request's asyncio task reads its events.
Text is decoded from all new ids at every step and only the part that can no longer change is sent: a trailing
partial UTF-8 character and any tail that could still grow into a stop string are held back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from harmlens.guards.latent.guard import Verdict


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


@dataclass(frozen=True)
class Delta:
    """New reply text."""

    text: str


class ChatStream:
    """Events of one chat request (Delta, then a final Reply, or an exception), filled from the model thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stop: tuple[str, ...] = ()) -> None:
        self.loop, self.stop = loop, stop
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.cancelled = False  # set by the request's task when the client has gone
        self.done = False
        self.sent = ""  # text already sent
        self.verdict: Verdict | None = None
        self.prompt: Any = None  # the rendered prompt (set on the model thread)
        self.truncated = False
        self.messages: list[dict] = []

    def _put(self, event: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def feed(self, text: str, final: bool) -> bool:
        """The reply so far (model thread); sends what is settled. True when a stop string ended the reply."""
        cut = min(
            (i for i in (text.find(s, max(0, len(self.sent) - len(s) + 1)) for s in self.stop) if i >= 0), default=-1
        )
        if cut >= 0:
            self._send(text[:cut])
            return True
        hold = 0
        if not final:
            hold = len(text) - len(text.rstrip("\ufffd"))  # an incomplete UTF-8 character
            for s in self.stop:
                hold = max(hold, next((k for k in range(len(s) - 1, 0, -1) if text.endswith(s[:k])), 0))
        self._send(text[: len(text) - hold])
        return False

    def _send(self, text: str) -> None:
        if len(text) > len(self.sent) and text.startswith(self.sent):
            self._put(Delta(text[len(self.sent) :]))
            self.sent = text

    def finish(self, reply: Reply | BaseException) -> None:
        """The end: a Reply (its text completes what was sent) or an exception for the request (model thread)."""
        if self.done:
            return
        self.done = True
        if isinstance(reply, Reply):
            self._send(reply.text)
        self._put(reply)

    async def __aiter__(self) -> AsyncIterator[Any]:
        while True:
            event = await self.events.get()
            yield event
            if not isinstance(event, Delta):
                return

    async def reply(self) -> Reply:
        """Wait for the whole reply (the non-streaming path)."""
        async for event in self:
            if isinstance(event, BaseException):
                raise event
            if isinstance(event, Reply):
                return event
        raise ServiceError("the reply ended without a result")
