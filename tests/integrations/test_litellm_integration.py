"""LiteLLM in front of a real guarded server: examples/integrations/litellm_guardrail.py (a CustomGuardrail calling
/v1/moderations), through the SDK (litellm.acompletion) and through the LiteLLM proxy with litellm_config.yaml,
against harmlens's server and the plugin-guarded vLLM server (no /v1/moderations there: the guardrail reads the
verdict header of a one-token chat completion).

LiteLLM runs in its own venv ($HARMLENS_LITELLM_PYTHON, default ../venv-litellm; tested with litellm[proxy] 1.108.6,
install command in docs/serving.md); without it these tests skip."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
import urllib.request

import pytest
from integration_helpers import ALLOWED, EXAMPLES, FLAGGED, json_lines, run_tool
from serve_helpers import API_KEY, free_port, post, stop_server, tool_python

PYTHON, WHY = tool_python("litellm", "litellm")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(PYTHON is None, reason=WHY)]

OFFLINE = {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}  # else litellm fetches its model price list at import


def test_sdk_guardrail_blocks_what_the_guard_flags(guarded_server):
    """litellm.acompletion to the guarded server as an openai/ model, with the guardrail registered as a callback."""
    args = ["litellm_guardrail.py", "--base", guarded_server.base, "--api-key", API_KEY, "--max-tokens", "8"]
    done = run_tool(PYTHON, [*args, FLAGGED, ALLOWED], OFFLINE)
    blocked, allowed = json_lines(done.stdout)
    assert blocked["blocked"] and blocked["reply"] is None
    assert "Guardrail: harmlens" in blocked["error"] and "blocked by the harmlens latent guard" in blocked["error"]
    assert not allowed["blocked"] and allowed["error"] is None
    direct = guarded_server.chat(ALLOWED, max_tokens=8)  # the same request asked of the server itself
    assert allowed["reply"] == direct["choices"][0]["message"]["content"] and allowed["reply"]
    assert allowed["finish_reason"] == direct["choices"][0]["finish_reason"]


def test_proxy_guardrail_from_config(guarded_server, tmp_path):
    """`litellm --config litellm_config.yaml`: the flagged request gets the guardrail's 400, the allowed one the
    guarded server's reply (with its verdict passed through)."""
    port, master = free_port(), "sk-" + secrets.token_hex(32)
    env = {
        **os.environ,
        **OFFLINE,
        "LITELLM_MASTER_KEY": master,
        "HARMLENS_OPENAI_BASE": guarded_server.base + "/v1",
        "HARMLENS_API_KEY": API_KEY,
    }
    cmd = [PYTHON, "-m", "litellm.proxy.proxy_cli", "--config", "litellm_config.yaml", "--host", "127.0.0.1"]
    log = tmp_path / "litellm.log"
    proc = subprocess.Popen(
        [*cmd, "--port", str(port)], cwd=EXAMPLES, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"litellm proxy exited {proc.returncode}: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"litellm proxy did not start: {log.read_text()[-3000:]}"
            try:
                urllib.request.urlopen(base + "/health/liveliness", timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)
        auth = {"Authorization": f"Bearer {master}"}

        def ask(prompt: str) -> tuple[int, dict]:
            body = {
                "model": "smollm2-guarded",
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": 8,
                "temperature": 0,
            }
            return post(base, "/v1/chat/completions", json.dumps(body).encode(), auth)

        status, reply = ask(FLAGGED)
        assert status == 400, reply
        assert "blocked by the harmlens latent guard" in reply["error"]["message"]
        status, reply = ask(ALLOWED)
        assert status == 200, reply
        direct = guarded_server.chat(ALLOWED, max_tokens=8)
        assert reply["choices"][0]["message"]["content"] == direct["choices"][0]["message"]["content"]
        assert guarded_server.allowed_field(reply) and guarded_server.allowed_field(direct)
        assert reply["harmlens"]["score"] == pytest.approx(direct["harmlens"]["score"], abs=1e-4)
    finally:
        stop_server(proc)
