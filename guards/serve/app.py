"""The FastAPI app: /v1/chat/completions (guarded generation), /v1/moderations, /v1/models and /health."""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from harmlens.guards.serve.batching import Batcher
from harmlens.guards.serve.images import take_images
from harmlens.guards.serve.schemas import (
    Chunks,
    Limits,
    RequestError,
    chat_response,
    check_model,
    moderation_response,
    parse_body,
    parse_chat,
    parse_moderation,
    verdict_field,
)
from harmlens.guards.serve.streams import ChatStream, Delta, Reply, ServiceError


def _error(exc: RequestError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def _data(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


async def _sse(
    stream: ChatStream, first: object, events: AsyncIterator, chunks: Chunks, usage: bool
) -> AsyncIterator[str]:
    """Server-sent events: the role, each delta as it is generated, the finish with the verdict, then [DONE]; a
    client that goes away cancels this generator, which marks the stream so the model thread drops its row."""
    try:
        yield _data(chunks.chunk({"role": "assistant", "content": ""}))
        event = first
        while True:
            if isinstance(event, Delta):
                yield _data(chunks.chunk({"content": event.text}))
            elif isinstance(event, Reply):
                verdict = verdict_field(event.verdict, event.blocked)
                yield _data(chunks.chunk({}, event.finish, harmlens=verdict))
                if usage:
                    n = (event.prompt_tokens, event.completion_tokens)
                    body = {"prompt_tokens": n[0], "completion_tokens": n[1], "total_tokens": sum(n)}
                    yield _data(chunks.chunk(None, usage=body))
                break
            else:  # the model failed mid-reply (fail-open) or the server stops: say so, then end
                yield _data({"error": {"message": str(event), "type": "server_error", "code": "model_error"}})
                break
            event = await anext(events)
        yield "data: [DONE]\n\n"
    finally:
        stream.cancelled = True


def create_app(batcher: Batcher, served: str, *, api_key: str | None = None, limits: Limits | None = None) -> FastAPI:
    """An app serving `batcher`'s guarded model under the name `served`; `api_key` makes /v1/* need a Bearer key."""
    limits = limits or Limits()
    key = api_key.encode() if api_key else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not batcher.thread.is_alive():
            batcher.start()
        yield
        batcher.stop()

    app = FastAPI(title="harmlens guarded model", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def guard_requests(request: Request, call_next):
        if key is not None and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            token = given[7:].encode() if given[:7].lower() == "bearer " else b""
            if not hmac.compare_digest(token, key):
                return _error(
                    RequestError(401, "missing or wrong API key (Authorization: Bearer KEY)", "invalid_api_key")
                )
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limits.max_body_bytes:
            return _error(
                RequestError(413, f"request body is {length} bytes, over the limit of {limits.max_body_bytes}")
            )
        return await call_next(request)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(RequestError(exc.status_code, str(exc.detail), "not_found" if exc.status_code == 404 else "http"))

    @app.get("/health")
    async def health() -> dict:
        guard = batcher.guarded.guard
        return {
            "status": "ok" if batcher.thread.is_alive() else "stopped",
            "model": served,
            "guarded": batcher.use_guard,
            "guard": {"method": guard.method, "position": guard.position, "layers": guard.layers, "alpha": guard.alpha},
            "fail_closed": guard.fail_closed,
            "batches": batcher.batches,
            "largest_batch": batcher.largest,
            "decode_steps": batcher.steps,
            "continuous": batcher.driver is not None,
            "running": batcher.driver.running if batcher.driver else 0,
            "queued": batcher.queue.qsize(),
        }

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": served, "object": "model", "created": 0, "owned_by": "harmlens"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        obj = parse_body(await request.body(), limits)
        check_model(obj, served)
        messages, image = take_images(obj.get("messages"), limits.max_images)  # a VLM's one image, decoded
        req = parse_chat({**obj, "messages": messages}, served, limits)
        stream = batcher.stream(
            req.messages, req.max_tokens, req.temperature, req.seed, image, top_p=req.top_p, stop=req.stop
        )
        if not req.stream:
            try:
                reply = await stream.reply()
            except ServiceError as exc:
                return _error(RequestError(503, str(exc), "model_error"))
            finally:
                stream.cancelled = True  # frees the slot if this client went away (a no-op once done)
            usage = (reply.prompt_tokens, reply.completion_tokens)
            verdict = verdict_field(reply.verdict, reply.blocked)
            return JSONResponse(chat_response(served, reply.text, reply.finish, usage, verdict))
        events = aiter(stream)
        try:
            first = await anext(events)  # a 400 (e.g. over the context) or a 503 is still an HTTP status here
        except BaseException:
            stream.cancelled = True
            raise
        if isinstance(first, RequestError):
            raise first
        if isinstance(first, ServiceError):
            return _error(RequestError(503, str(first), "model_error"))
        return StreamingResponse(
            _sse(stream, first, events, Chunks(served), req.include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )

    @app.post("/v1/moderations")
    async def moderations(request: Request) -> Response:
        items = parse_moderation(parse_body(await request.body(), limits), served, limits)
        try:
            verdicts = await batcher.moderate(items)
        except ServiceError as exc:
            return _error(RequestError(503, str(exc), "model_error"))
        return JSONResponse(moderation_response(served, verdicts))

    return app
