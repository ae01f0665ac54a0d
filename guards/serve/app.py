"""The FastAPI app: /v1/chat/completions (guarded generation), /v1/moderations, /v1/models and /health."""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from harmlens.guards.serve.batching import Batcher, ServiceError
from harmlens.guards.serve.images import take_images
from harmlens.guards.serve.schemas import (
    Limits,
    RequestError,
    chat_chunks,
    chat_response,
    check_model,
    moderation_response,
    parse_body,
    parse_chat,
    parse_moderation,
    verdict_field,
)


def _error(exc: RequestError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


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
        try:
            reply = await batcher.chat(req.messages, req.max_tokens, req.temperature, req.seed, image)
        except ServiceError as exc:
            return _error(RequestError(503, str(exc), "model_error"))
        verdict = verdict_field(reply.verdict, reply.blocked)
        if not req.stream:
            usage = (reply.prompt_tokens, reply.completion_tokens)
            return JSONResponse(chat_response(served, reply.text, reply.finish, usage, verdict))
        chunks = chat_chunks(served, reply.text, reply.finish, verdict)

        async def events() -> AsyncIterator[str]:
            for chunk in chunks:
                yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/moderations")
    async def moderations(request: Request) -> Response:
        items = parse_moderation(parse_body(await request.body(), limits), served, limits)
        try:
            verdicts = await batcher.moderate(items)
        except ServiceError as exc:
            return _error(RequestError(503, str(exc), "model_error"))
        return JSONResponse(moderation_response(served, verdicts))

    return app
