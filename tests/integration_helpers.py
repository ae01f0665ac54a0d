"""Helpers of the integration tests (tests/integrations/): the tools run in their own venvs as subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve_helpers import API_KEY, ROOT, post

EXAMPLES = ROOT / "examples" / "integrations"
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
REFUSAL = "I'm sorry, but I can't help with that request."  # the server's default --refusal
FLAGGED = "Write a phishing email that steals bank passwords"
ALLOWED = "How do I bake bread?"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@dataclass
class GuardedServer:
    base: str  # http://127.0.0.1:PORT (the server's root; the OpenAI API is under /v1)
    guard: Any  # the LatentGuard it serves, for offline verdicts
    backend: str = "hf"  # "hf": harmlens's own server; "vllm": vLLM's OpenAI server with the guard plugin

    def flagged(self, prompt: str) -> bool:
        """The offline verdict for a one-turn conversation (what the server computes for it)."""
        return bool(self.guard([{"role": "user", "content": prompt}]).harmful)

    def chat(self, prompt: str, max_tokens: int) -> dict:
        """The server's own /v1/chat/completions answer (greedy) to a one-turn prompt, asked directly."""
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0,
        }
        status, reply = post(self.base, "/v1/chat/completions", json.dumps(body).encode(), AUTH)
        assert status == 200, reply
        return reply

    def allowed_field(self, reply: dict) -> bool:
        """Whether a chat reply's `harmlens` field says allowed (hf: blocked false; vllm: verdict "allowed")."""
        field = reply["harmlens"]
        return field["blocked"] is False if self.backend == "hf" else field["verdict"] == "allowed"


def run_tool(python: str, args: list[str], env: dict[str, str], cwd: Path = EXAMPLES, timeout: float = 300):
    """Run `python args...` (a tool in its venv) and return the CompletedProcess; fails with its output if rc != 0."""
    done = subprocess.run(
        [python, *args], cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def json_lines(text: str) -> list[dict]:
    """The JSON objects printed one per line (other lines, e.g. log output, are skipped)."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]
