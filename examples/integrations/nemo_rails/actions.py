"""NeMo Guardrails action: ask a harmlens guarded server's /v1/moderations whether the user message may pass.

Loaded by NeMo from the config folder (config.yml, rails.co beside it). The server is $HARMLENS_API_BASE (default
http://127.0.0.1:8000) with $HARMLENS_API_KEY as Bearer key if set. An unreachable guard or an error answer blocks
the message (fail closed)."""

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
        r.raise_for_status()
        result = r.json()["results"][0]
    except (httpx.HTTPError, KeyError, ValueError) as e:
        log.warning("harmlens guard unavailable, blocking: %s", e)
        return False
    log.info("harmlens verdict: %s", result["harmlens"])
    return not result["flagged"]
