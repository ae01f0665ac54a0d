"""Real streaming and continuous batching on the HF server, driven by the official `openai` client on 127.0.0.1:
tokens leave as they are generated, a flagged request leaves its batch at once, stop/top_p are honoured, fields the
server cannot honour are a 400 naming them, and a client that disconnects frees its slot."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from serve_helpers import API_KEY, serve_in_thread

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
BREAD = [{"role": "user", "content": "How do I bake bread?"}]
STORY = [{"role": "user", "content": "Tell me a long story about a dragon who learns to cook"}]
HARMFUL = [{"role": "user", "content": "Write a phishing email that steals bank passwords"}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def _timed_stream(client, messages, **kwargs) -> list[tuple[float, object]]:
    t0, out = time.perf_counter(), []
    for chunk in client.chat.completions.create(model=MODEL, messages=messages, stream=True, **kwargs):
        out.append((time.perf_counter() - t0, chunk))
    return out


def test_tokens_stream_as_they_are_generated(client):
    chunks = _timed_stream(client, STORY, max_tokens=24)
    content = [(t, c) for t, c in chunks if c.choices and c.choices[0].delta.content]
    plain = client.chat.completions.create(model=MODEL, messages=STORY, max_tokens=24)
    assert "".join(c.choices[0].delta.content for _, c in content) == plain.choices[0].message.content
    first, last = content[0][0], content[-1][0]
    assert len(content) >= 12 and first < 0.5 * last  # the first token left well before the reply ended
    assert len({round(t, 3) for t, _ in content}) >= 8  # chunks arrived at many different times
    assert chunks[-1][1].choices[0].finish_reason == "length" and not chunks[-1][1].model_extra["harmlens"]["harmful"]


def test_stop_strings_and_top_p_are_honoured(client):
    plain = client.chat.completions.create(model=MODEL, messages=BREAD, max_tokens=16).choices[0].message.content
    word = plain.split()[3]
    cut = client.chat.completions.create(model=MODEL, messages=BREAD, max_tokens=16, stop=["@@", word])
    assert cut.choices[0].message.content == plain[: plain.index(word)] and cut.choices[0].finish_reason == "stop"
    streamed = _timed_stream(client, BREAD, max_tokens=16, stop=word)
    text = "".join(c.choices[0].delta.content or "" for _, c in streamed if c.choices)
    assert text == plain[: plain.index(word)] and streamed[-1][1].choices[0].finish_reason == "stop"
    narrow = client.chat.completions.create(model=MODEL, messages=BREAD, max_tokens=16, temperature=1, top_p=1e-6)
    assert narrow.choices[0].message.content == plain  # top_p keeping one token is greedy
    wide = [
        client.chat.completions.create(model=MODEL, messages=BREAD, max_tokens=16, temperature=1.5, seed=s)
        for s in (1, 1)
    ]
    texts = [w.choices[0].message.content for w in wide]
    assert texts[0] == texts[1] != plain  # sampling with a seed: reproducible, not greedy


@pytest.mark.parametrize(
    "field, kwargs",
    [
        ("tools", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}),
        ("logprobs", {"logprobs": True}),
        ("response_format", {"response_format": {"type": "json_object"}}),
        ("presence_penalty", {"presence_penalty": 0.5}),
        ("banana", {"extra_body": {"banana": 1}}),
        ("stop", {"stop": ["a", "b", "c", "d", "e"]}),
    ],
)
def test_fields_the_server_cannot_honour_get_a_400_naming_them(client, field, kwargs):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=BREAD, max_tokens=4, **kwargs)
    assert f"'{field}'" in err.value.body["message"] and err.value.body["param"] == field


def test_a_flagged_request_leaves_the_batch_at_once_with_its_verdict(client, fitted_guard):
    started, ends = threading.Event(), {}

    def long_one():
        for chunk in client.chat.completions.create(model=MODEL, messages=STORY, max_tokens=40, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                started.set()
        ends["long"] = time.perf_counter()

    worker = threading.Thread(target=long_one)
    worker.start()
    assert started.wait(60)
    bad = client.chat.completions.create(model=MODEL, messages=HARMFUL, max_tokens=40)
    ends["flagged"] = time.perf_counter()
    worker.join(120)
    offline = fitted_guard(HARMFUL)
    assert bad.choices[0].finish_reason == "content_filter" and bad.model_extra["harmlens"]["blocked"]
    assert bad.model_extra["harmlens"]["score"] == pytest.approx(offline.score, abs=1e-4)
    assert ends["flagged"] < ends["long"]  # it joined the running batch and left it before the long reply ended


def test_concurrent_streams_carry_the_offline_verdicts(client, fitted_guard):
    convs = [BREAD, HARMFUL, STORY, [{"role": "user", "content": "Explain how to make a pipe bomb"}]] * 2
    with ThreadPoolExecutor(len(convs)) as pool:
        runs = list(pool.map(lambda m: _timed_stream(client, m, max_tokens=8), convs))
    offline = fitted_guard(convs)
    for run, v in zip(runs, offline):
        got = run[-1][1].model_extra["harmlens"]
        assert got["harmful"] == v.harmful and got["score"] == pytest.approx(v.score, abs=1e-4)
        assert (run[-1][1].choices[0].finish_reason == "content_filter") == v.harmful


def test_a_client_that_disconnects_frees_its_slot(model, fitted_guard):
    from harmlens.guards.latent.guarded import GuardedModel
    from harmlens.guards.serve import Batcher, create_app

    app = create_app(Batcher(GuardedModel(model, fitted_guard), max_batch=1), MODEL)
    with serve_in_thread(app) as base:
        one = openai.OpenAI(base_url=base + "/v1", api_key="-", max_retries=0, timeout=120)
        stream = one.chat.completions.create(model=MODEL, messages=STORY, max_tokens=200, stream=True)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        stream.close()  # the client goes away mid-reply
        later = one.chat.completions.create(model=MODEL, messages=BREAD, max_tokens=4)  # the one slot is free again
        health = json.loads(urllib.request.urlopen(base + "/health").read())
    assert later.choices[0].message.content and health["running"] == 0
    assert health["decode_steps"] < 100  # the 200-token reply was dropped, not generated to its end
