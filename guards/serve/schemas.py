"""Request parsing (one-line 4xx reasons, never a 500) and OpenAI-shaped response bodies for the guarded server."""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from harmlens.errors import HarmlensError
from harmlens.guards.latent.guard import Verdict
from harmlens.guards.serve.chat_fields import number, stop_strings, unsupported
from harmlens.guards.serve.errors import RequestError
from harmlens.runtime import clean_messages, message_text

GUARD_MODEL = "harmlens-latent-guard"  # the model name /v1/moderations also answers to


@dataclass(frozen=True)
class Limits:
    """Server-side bounds on a request."""

    max_body_bytes: int = 2 * 1024 * 1024
    max_message_chars: int = 65536
    max_tokens: int = 512
    default_max_tokens: int = 128
    max_images: int = 0  # images per chat request: 1 for a VLM served with its processor, 0 for a text model


@dataclass(frozen=True)
class ChatRequest:
    """A validated /v1/chat/completions request."""

    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float
    seed: int
    stream: bool
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    include_usage: bool = False  # stream_options.include_usage: a last chunk with usage


def parse_body(body: bytes, limits: Limits) -> dict[str, Any]:
    """The JSON object in a request body (413 when too large, 400 for bad UTF-8, bad JSON or a non-object)."""
    if len(body) > limits.max_body_bytes:
        raise RequestError(413, f"request body is {len(body)} bytes, over the limit of {limits.max_body_bytes}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"request body is not valid UTF-8 (byte {exc.start})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RequestError(400, f"malformed JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise RequestError(400, "request body must be a JSON object")
    return obj


def check_model(obj: dict, served: str, *, required: bool = True, also: tuple[str, ...] = ()) -> None:
    """404 unless `model` names the served model (or one of `also`); 400 when required and missing."""
    model = obj.get("model")
    if model is None and not required:
        return
    if not isinstance(model, str) or not model:
        raise RequestError(400, "missing 'model' (a string)", param="model")
    if model not in (served, *also):
        raise RequestError(404, f"model {model!r} is not served here; this server serves {served!r}", "model_not_found")


def _int(obj: dict, key: str, default: int, lo: int, hi: int) -> int:
    value = obj.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise RequestError(400, f"'{key}' must be an integer from {lo} to {hi}, got {value!r}", param=key)
    return value


def _messages(raw: Any, limits: Limits) -> list[dict[str, str]]:
    if raw is None:
        raise RequestError(400, "missing 'messages' (a list of {role, content} messages)", param="messages")
    if not isinstance(raw, list) or not raw or not all(isinstance(m, dict) for m in raw):
        raise RequestError(400, "'messages' must be a non-empty list of {role, content} objects", param="messages")
    for i, m in enumerate(raw):
        try:
            text = message_text(m["content"], str(m.get("role"))) if m.get("content") is not None else ""
        except HarmlensError as exc:
            raise RequestError(400, str(exc), param=f"messages[{i}].content") from None
        if len(text) > limits.max_message_chars:
            raise RequestError(
                413,
                f"message {i} is {len(text)} characters, over the limit of {limits.max_message_chars}",
                "message_too_long",
                f"messages[{i}].content",
            )
    try:
        return clean_messages(raw)
    except HarmlensError as exc:
        raise RequestError(400, str(exc), param="messages") from None


def parse_chat(obj: dict, served: str, limits: Limits) -> ChatRequest:
    """Validate a chat-completions request body; a field the server cannot honour is a 400 naming it."""
    check_model(obj, served)
    unsupported(obj)
    messages = _messages(obj.get("messages"), limits)
    if _int(obj, "n", 1, 1, 1 << 30) != 1:
        raise RequestError(400, "'n' must be 1: this server returns one choice per request", param="n")
    key = "max_completion_tokens" if obj.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _int(obj, key, limits.default_max_tokens, 1, limits.max_tokens)
    temperature = number(obj, "temperature", 0.0, 0, 2)
    top_p = number(obj, "top_p", 1.0, 0, 1, open_lo=True)
    stream = obj.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise RequestError(400, "'stream' must be true or false", param="stream")
    options = obj.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise RequestError(400, "'stream_options' takes only include_usage", param="stream_options")
    seed = _int(obj, "seed", 0, -(1 << 63), (1 << 63) - 1)
    stop = stop_strings(obj.get("stop"))
    return ChatRequest(messages, max_tokens, temperature, seed, stream, top_p, stop, bool(options.get("include_usage")))


def parse_moderation(obj: dict, served: str, limits: Limits) -> list[Any]:
    """Items to score: `input` (a string or a list of strings, each a one-turn prompt) or, as a harmlens extension,
    `messages` (one conversation, read at its last user turn)."""
    check_model(obj, served, required=False, also=(GUARD_MODEL, "omni-moderation-latest", "text-moderation-latest"))
    if obj.get("messages") is not None:
        return [_messages(obj["messages"], limits)]
    raw = obj.get("input")
    if raw is None:
        raise RequestError(400, "missing 'input' (a string or a list of strings) or 'messages'", param="input")
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items:
        raise RequestError(400, "'input' must be a string or a non-empty list of strings", param="input")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("type") == "text":
            item = item.get("text")
        if isinstance(item, dict) and item.get("type") in ("image_url", "input_image"):
            why = "/v1/moderations scores text only" if limits.max_images else "this is a text model"
            raise RequestError(400, f"input {i} is an image, but {why}", param="input")
        if not isinstance(item, str) or not item.strip():
            raise RequestError(400, f"input {i} must be a non-empty string", param="input")
        if len(item) > limits.max_message_chars:
            raise RequestError(
                413, f"input {i} is {len(item)} characters, over the limit of {limits.max_message_chars}"
            )
        out.append([{"role": "user", "content": item.strip()}])
    return out


def verdict_field(verdict: Verdict | None, blocked: bool) -> dict | None:
    """The `harmlens` field: the guard's verdict and whether the reply was replaced by the refusal."""
    return None if verdict is None else {**verdict.to_dict(), "blocked": blocked}


def chat_response(served: str, text: str, finish: str, usage: tuple[int, int], harmlens: dict | None) -> dict:
    """A chat.completion body with one choice and a `harmlens` field."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": served,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)},
        "harmlens": harmlens,
    }


class Chunks:
    """chat.completion.chunk bodies of one streamed reply: the role, text deltas, then finish_reason + verdict."""

    def __init__(self, served: str) -> None:
        self.served, self.ident, self.created = served, f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(self, delta: dict | None, finish_reason: str | None = None, **extra: Any) -> dict:
        """One chunk (delta None: no choices, e.g. the usage chunk)."""
        body = {"id": self.ident, "object": "chat.completion.chunk", "created": self.created, "model": self.served}
        choices = (
            [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
        )
        return {**body, "choices": choices, **extra}


def moderation_response(served: str, verdicts: list[Verdict]) -> dict:
    """OpenAI's moderation shape: one result per input with flagged, a 'harmful' category score, and the verdict."""
    results = []
    for v in verdicts:
        if math.isnan(v.score):
            prob = 1.0 if v.harmful else 0.0
        else:
            prob = 1 / (1 + math.exp(-max(-60.0, min(60.0, v.score - v.threshold))))
        results.append(
            {
                "flagged": v.harmful,
                "categories": {"harmful": v.harmful},
                "category_scores": {"harmful": prob},
                "category_applied_input_types": {"harmful": ["text"]},
                "harmlens": v.to_dict(),
            }
        )
    return {"id": f"modr-{uuid.uuid4().hex}", "model": served, "results": results}
