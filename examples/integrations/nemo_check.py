"""Run user messages through the NeMo Guardrails config in nemo_rails/ (harmlens input rail + harmlens as main model).

    HARMLENS_API_BASE=http://127.0.0.1:8000 HARMLENS_API_KEY=KEY python nemo_check.py "prompt" ...

Prints one JSON line per message: {"prompt", "reply", "blocked", "rails"}: "blocked" is true when the harmlens
input rail stopped the message, "rails" lists the activated rails with their decisions and executed actions.
The main model's base_url and api_key in nemo_rails/config.yml are replaced by $HARMLENS_API_BASE/v1 and
$HARMLENS_API_KEY, so the same config works against any port. Tested with nemoguardrails 0.24.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path

from nemoguardrails import LLMRails, RailsConfig

CONFIG = Path(__file__).resolve().parent / "nemo_rails"


def load_rails(base: str, key: str | None) -> LLMRails:
    """LLMRails of nemo_rails/ with its main model pointed at the harmlens server at `base`."""
    config = RailsConfig.from_path(str(CONFIG))
    for model in config.models:
        if model.type == "main":
            model.parameters = {**model.parameters, "base_url": f"{base}/v1", "api_key": key or "none"}
    return LLMRails(config)


async def check(rails: LLMRails, prompt: str) -> dict:
    """One user message through the rails; what happened, as a dict."""
    res = await rails.generate_async(
        messages=[{"role": "user", "content": prompt}], options={"log": {"activated_rails": True}}
    )
    activated = res.log.activated_rails if res.log else []
    rails_log = [
        {
            "type": r.type,
            "name": r.name,
            "decisions": r.decisions,
            "stop": r.stop,
            "actions": [a.action_name for a in r.executed_actions],
        }
        for r in activated
    ]
    blocked = any(r["type"] == "input" and r["name"] == "harmlens input check" and r["stop"] for r in rails_log)
    reply = res.response[-1]["content"] if isinstance(res.response, list) and res.response else res.response
    return {"prompt": prompt, "reply": reply, "blocked": blocked, "rails": rails_log}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prompts", nargs="+")
    args = ap.parse_args()
    base = os.environ.get("HARMLENS_API_BASE", "http://127.0.0.1:8000").rstrip("/")
    rails = load_rails(base, os.environ.get("HARMLENS_API_KEY"))

    async def run() -> None:
        for prompt in args.prompts:
            print(json.dumps(await check(rails, prompt)), flush=True)

    asyncio.run(run())


if __name__ == "__main__":
    main()
