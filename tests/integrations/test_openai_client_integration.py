"""The real `openai` client (installed beside harmlens) against both guarded servers, streamed and not: a flagged
prompt gets the server's refusal with finish_reason "content_filter", an allowed one the server's own greedy reply,
and the streamed text equals the non-streamed one."""

from __future__ import annotations

import pytest
from integration_helpers import ALLOWED, FLAGGED, MODEL, REFUSAL
from serve_helpers import API_KEY

openai = pytest.importorskip("openai")


def ask(client, prompt: str, stream: bool) -> tuple[str, str | None]:
    """(text, finish_reason) of one greedy chat completion, 16 tokens at most."""
    kw = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 16, "temperature": 0}
    if not stream:
        choice = client.chat.completions.create(**kw).choices[0]
        return choice.message.content, choice.finish_reason
    parts, finish = [], None
    for chunk in client.chat.completions.create(**kw, stream=True):
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    return "".join(parts), finish


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_openai_client_gets_refusal_or_reply(guarded_server, stream):
    client = openai.OpenAI(base_url=guarded_server.base + "/v1", api_key=API_KEY, max_retries=0, timeout=120)
    assert ask(client, FLAGGED, stream) == (REFUSAL, "content_filter")
    text, finish = ask(client, ALLOWED, stream)
    direct = guarded_server.chat(ALLOWED, max_tokens=16)["choices"][0]
    assert text and (text, finish) == (direct["message"]["content"], direct["finish_reason"])
