"""A LiteLLM custom guardrail that asks a harmlens guarded server's /v1/moderations before a request goes out.

Tested with litellm 1.110.2 (tests/integrations/test_litellm.py). Two ways to use it:

- LiteLLM proxy: put this file next to `litellm_config.yaml` and run `litellm --config litellm_config.yaml`; the
  config's `guardrail: litellm_guardrail.HarmlensGuardrail` loads the class below.
- LiteLLM SDK: `litellm.callbacks = [HarmlensGuardrail(guardrail_name="harmlens", event_hook="pre_call",
  default_on=True)]`, then `litellm.acompletion(..., guardrails=["harmlens"])`; `main()` below does exactly that:

    python litellm_guardrail.py --base http://127.0.0.1:8000 --model HuggingFaceTB/SmolLM2-135M-Instruct "prompt" ...

  prints one JSON line per prompt: {"prompt", "blocked", "error", "reply", "finish_reason"}.

A flagged request raises litellm's GuardrailRaisedException (the proxy answers HTTP 400 with the message); the
guard's verdict is read with the *served* model, so this only makes sense when that model is the one answering or
the one the guard was fitted on. Pointing LiteLLM's model at the guarded server itself (as main() does) also gets
the server's own zero-extra-forward guard on /v1/chat/completions behind this check.

Against the plugin-guarded `vllm serve` (`python -m harmlens.guards serve GUARD --backend vllm`), which has no
/v1/moderations: a 404 there makes the check ask the same server for a one-token chat completion and read its
`x-harmlens-verdict` header (one more prefill per request); any other answer, or no header, blocks (fail closed).
Without this guardrail at all, a flagged request to that server still gets the refusal with finish_reason
"content_filter", which LiteLLM passes through.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Any

import httpx
from litellm.exceptions import GuardrailRaisedException
from litellm.integrations.custom_guardrail import CustomGuardrail


class HarmlensGuardrail(CustomGuardrail):
    """Pre-call guardrail: POST the conversation to {api_base}/v1/moderations and block what the latent guard flags.

    `api_base` (the server's root, with or without /v1) and `api_key` default to $HARMLENS_API_BASE (else
    http://127.0.0.1:8000) and $HARMLENS_API_KEY; the guard server's own error (unreachable, 4xx/5xx) blocks the
    request too (fail closed)."""

    def __init__(self, api_base: str | None = None, api_key: str | None = None, **kwargs: Any) -> None:
        base = api_base or os.environ.get("HARMLENS_API_BASE") or "http://127.0.0.1:8000"
        self.harmlens_base = base.rstrip("/").removesuffix("/v1")  # the server's root; ".../v1" is accepted too
        self.harmlens_key = api_key or os.environ.get("HARMLENS_API_KEY")
        kwargs.setdefault("guardrail_name", "harmlens")
        kwargs.setdefault("event_hook", "pre_call")
        super().__init__(**kwargs)

    async def moderate(self, messages: list[dict]) -> dict:
        """The /v1/moderations result for one conversation (read at its last user turn); from vLLM's server, which
        has none, the verdict header of a one-token chat completion in the same shape."""
        base, headers = (
            self.harmlens_base,
            {"Authorization": f"Bearer {self.harmlens_key}"} if self.harmlens_key else {},
        )
        async with httpx.AsyncClient(timeout=120) as client:
            r = await client.post(f"{base}/v1/moderations", json={"messages": messages}, headers=headers)
            if r.status_code != 404:
                r.raise_for_status()
                return r.json()["results"][0]
            models = await client.get(f"{base}/v1/models", headers=headers)
            models.raise_for_status()
            body = {"model": models.json()["data"][0]["id"], "messages": messages, "max_tokens": 1, "temperature": 0}
            r = await client.post(f"{base}/v1/chat/completions", json=body, headers=headers)
        r.raise_for_status()
        label = r.headers.get("x-harmlens-verdict")  # allowed | flagged | failed, from the plugin's middleware
        if label is None:
            raise ValueError("the server has no /v1/moderations and sent no x-harmlens-verdict header")
        return {"flagged": label != "allowed", "harmlens": r.json().get("harmlens") or {"verdict": label}}

    async def async_pre_call_hook(self, user_api_key_dict, cache, data: dict, call_type):  # type: ignore[override]
        messages = data.get("messages")
        if not messages:
            return data
        try:
            result = await self.moderate(
                [{"role": m["role"], "content": m["content"]} for m in messages if m.get("content")]
            )
        except (httpx.HTTPError, KeyError, ValueError) as e:
            raise GuardrailRaisedException(self.guardrail_name, f"harmlens guard unavailable: {e}") from e
        if result["flagged"]:
            verdict = result["harmlens"]
            score, threshold = verdict.get("score"), verdict.get("threshold")
            why = f"score {score:.4g} > threshold {threshold:.4g}" if score is not None else verdict.get("error")
            raise GuardrailRaisedException(
                self.guardrail_name,
                f"blocked by the harmlens latent guard ({why or 'no verdict'})",
                status_code=400,
                blocked_content=True,
            )
        return data


async def ask(model: str, base: str, key: str | None, prompt: str, max_tokens: int) -> dict:
    """One litellm.acompletion through the guardrail to the guarded server; what happened, as a dict."""
    import litellm

    out: dict[str, Any] = {"prompt": prompt, "blocked": False, "error": None, "reply": None, "finish_reason": None}
    try:
        r = await litellm.acompletion(
            model=f"openai/{model}",
            api_base=f"{base}/v1",
            api_key=key or "none",
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            temperature=0,
            guardrails=["harmlens"],
            num_retries=0,
        )
    except GuardrailRaisedException as e:
        out.update(blocked=True, error=str(e))
    else:
        out.update(reply=r.choices[0].message.content, finish_reason=r.choices[0].finish_reason)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prompts", nargs="+")
    ap.add_argument("--base", default=os.environ.get("HARMLENS_API_BASE", "http://127.0.0.1:8000"))
    ap.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    ap.add_argument("--api-key", default=os.environ.get("HARMLENS_API_KEY"))
    ap.add_argument("--max-tokens", type=int, default=16)
    args = ap.parse_args()

    import litellm

    litellm.callbacks = [HarmlensGuardrail(api_base=args.base, api_key=args.api_key, default_on=True)]

    async def run() -> None:
        for prompt in args.prompts:
            print(json.dumps(await ask(args.model, args.base, args.api_key, prompt, args.max_tokens)), flush=True)

    asyncio.run(run())


if __name__ == "__main__":
    main()
