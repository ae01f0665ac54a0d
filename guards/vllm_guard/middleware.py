"""The guard's verdict to the client of `vllm serve` (--middleware): a header and finish_reason "content_filter".

vLLM's logits processors cannot set a finish reason (a forced EOS ends a request with "stop"), so this ASGI middleware
on vLLM's API server reads the verdict the worker wrote (HARMLENS_VERDICT_DIR, by request id) when the first body
chunk of a completion leaves: it adds `x-harmlens-verdict: allowed|flagged|failed` and `x-harmlens-score`, a
`harmlens` field to a JSON reply, and turns a flagged reply's finish_reason "stop" into "content_filter" (streamed or
not). Without the directory it passes everything through.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from harmlens.guards.vllm_guard.plugin_reader import VERDICT_DIR_ENV, verdict_name

_PATHS = ("/v1/chat/completions", "/v1/completions")
_ID = re.compile(rb'"id"\s*:\s*"([^"]{1,300})"')


def read_verdict(folder: Path, response_id: str) -> dict | None:
    """The worker's verdict record for a response (removed once read), or None; a completion's first prompt is
    vLLM's request `<id>-0`."""
    for request_id in (response_id, f"{response_id}-0"):
        path = folder / verdict_name(request_id)
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        path.unlink(missing_ok=True)
        return record if isinstance(record, dict) else None
    return None


def _label(record: dict) -> str:
    return "failed" if record.get("error") else "flagged" if record.get("flagged") else "allowed"


def _rewrite_json(body: bytes, record: dict) -> bytes:
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if record.get("flagged"):
        for choice in data.get("choices") or []:
            if choice.get("finish_reason") == "stop":
                choice["finish_reason"] = "content_filter"
    data["harmlens"] = {
        "verdict": _label(record),
        **{k: record.get(k) for k in ("score", "threshold", "error", "rows")},
    }
    return json.dumps(data).encode()


def _rewrite_sse(body: bytes) -> bytes:
    return body.replace(b'"finish_reason":"stop"', b'"finish_reason":"content_filter"')


class VerdictMiddleware:
    """ASGI middleware: holds a completion's response start until its first body chunk names the request id."""

    def __init__(self, app: Any) -> None:
        self.app = app
        folder = os.environ.get(VERDICT_DIR_ENV)
        self.folder = Path(folder) if folder else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if self.folder is None or scope.get("type") != "http" or scope.get("path") not in _PATHS:
            await self.app(scope, receive, send)
            return
        held: dict[str, Any] = {"start": None, "record": None, "sse": False}

        async def relay(message: dict) -> None:
            if message["type"] == "http.response.start":
                held["start"] = message
                return
            if message["type"] == "http.response.body" and held["start"] is not None:
                start, held["start"] = held["start"], None
                headers = [(k, v) for k, v in start.get("headers", [])]
                held["sse"] = any(k == b"content-type" and v.startswith(b"text/event-stream") for k, v in headers)
                found = _ID.search(message.get("body", b""))
                record = read_verdict(self.folder, found.group(1).decode()) if found else None  # type: ignore[arg-type]
                held["record"] = record
                if record is not None:
                    if not held["sse"] and not message.get("more_body"):
                        message = {**message, "body": _rewrite_json(message.get("body", b""), record)}
                        headers = [(k, v) for k, v in headers if k != b"content-length"]
                        headers.append((b"content-length", str(len(message["body"])).encode()))
                    headers.append((b"x-harmlens-verdict", _label(record).encode()))
                    headers.append((b"x-harmlens-score", str(record.get("score")).encode()))
                await send({**start, "headers": headers})
            if message["type"] == "http.response.body" and held["sse"] and (held["record"] or {}).get("flagged"):
                message = {**message, "body": _rewrite_sse(message.get("body", b""))}
            await send(message)

        await self.app(scope, receive, relay)
