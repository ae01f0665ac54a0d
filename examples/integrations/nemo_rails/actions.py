"""NeMo Guardrails action: ask a harmlens guarded server's /v1/moderations whether the user message may pass.

Loaded by NeMo from the config folder (config.yml, rails.co beside it). The server is $HARMLENS_API_BASE (default
http://127.0.0.1:8000) with $HARMLENS_API_KEY as Bearer key if set. An unreachable guard or an error answer blocks
the message (fail closed). Against the plugin-guarded `vllm serve`, which has no /v1/moderations (404), the action
asks the same server for a one-token chat completion and reads its `x-harmlens-verdict` header instead (one more
prefill per message); no header blocks too."""

from __future__ import annotations

import logging
import os

import httpx
from nemoguardrails.actions import action

log = logging.getLogger(__name__)


@action(is_system_action=True)
async def harmlens_check(context: dict | None = None) -> bool:
    """True when the latent guard allows the last user message, False when it flags it (or cannot answer)."""
    message = (context or {}).get("user_message")
    if not message:
        return True
    base = os.environ.get("HARMLENS_API_BASE", "http://127.0.0.1:8000").rstrip("/")
    key = os.environ.get("HARMLENS_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        async with httpx.AsyncClient(timeout=120) as client:
            r = await client.post(f"{base}/v1/moderations", json={"input": message}, headers=headers)
            if r.status_code == 404:  # vLLM's server with the harmlens plugin
                result = await _chat_verdict(client, base, headers, message)
            else:
                r.raise_for_status()
                result = r.json()["results"][0]
    except (httpx.HTTPError, KeyError, ValueError) as e:
        log.warning("harmlens guard unavailable, blocking: %s", e)
        return False
    log.info("harmlens verdict: %s", result["harmlens"])
    return not result["flagged"]


async def _chat_verdict(client: httpx.AsyncClient, base: str, headers: dict, message: str) -> dict:
    """A /v1/moderations-shaped result from the verdict header of a one-token chat completion (vLLM plugin)."""
    models = await client.get(f"{base}/v1/models", headers=headers)
    models.raise_for_status()
    messages = [{"role": "user", "content": message}]
    body = {"model": models.json()["data"][0]["id"], "messages": messages, "max_tokens": 1, "temperature": 0}
    r = await client.post(f"{base}/v1/chat/completions", json=body, headers=headers)
    r.raise_for_status()
    label = r.headers.get("x-harmlens-verdict")  # allowed | flagged | failed
    if label is None:
        raise ValueError("the server has no /v1/moderations and sent no x-harmlens-verdict header")
    return {"flagged": label != "allowed", "harmlens": r.json().get("harmlens") or {"verdict": label}}
