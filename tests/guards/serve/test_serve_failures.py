"""Server start-up refusals and internal errors: fail closed by default, fail open only when asked."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from serve_helpers import ROOT, post, serve_in_thread, start_server, stop_server

pytest.importorskip("fastapi")

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
BREAD = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "How do I bake bread?"}], "max_tokens": 3})


def test_refuses_a_guard_of_another_model(tiny_model, tmp_path):
    from harmlens.guards import CentroidConfig, LatentGuard

    path = LatentGuard.fit(
        tiny_model, ["Make a bomb", "Steal a car"], ["Bake bread", "Plant a tree"], CentroidConfig(layers=(0,))
    )
    path = path.save(tmp_path / "tiny.safetensors")
    cmd = [sys.executable, "-m", "harmlens.guards", "serve", str(path), "--model", MODEL, "--device", "cpu"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: refusing to serve: the guard does not belong to this model")
    assert "harmlens-test/tiny-random-llama" in last


def test_internal_errors_fail_closed_unless_fail_open(fitted_guard, model):
    """A guard that cannot score (its centroid turned NaN after the load-time checks) fails closed on a real
    127.0.0.1 server (content_filter, error in the verdict); with fail_closed=False it answers (harmful false, the
    error still reported)."""
    from harmlens.guards import LatentGuard
    from harmlens.guards.latent.guarded import GuardedModel
    from harmlens.guards.serve import Batcher, create_app

    for fail_closed in (True, False):
        guard = LatentGuard(fitted_guard.tensors, fitted_guard.metadata, model, fail_closed=fail_closed)
        guard.tensors["harmful"] = torch.full_like(guard.tensors["harmful"], float("nan"))  # a corrupted guard
        app = create_app(Batcher(GuardedModel(model, guard)), MODEL)
        with serve_in_thread(app) as base:
            status, body = post(base, "/v1/chat/completions", BREAD.encode())
            status_mod, mod = post(base, "/v1/moderations", b'{"input": "hello"}')
        verdict = body["harmlens"]
        assert status == 200 and status_mod == 200 and verdict["score"] is None and "non-finite" in verdict["error"]
        if fail_closed:
            assert body["choices"][0]["finish_reason"] == "content_filter" and verdict["harmful"] and verdict["blocked"]
            assert mod["results"][0]["flagged"] and mod["results"][0]["harmlens"]["error"]
        else:
            assert body["choices"][0]["finish_reason"] in ("stop", "length") and not verdict["harmful"]
            assert body["choices"][0]["message"]["content"]


def test_a_full_queue_answers_429(fitted_guard, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    path = fitted_guard.save(tmp_path / "guard.safetensors")
    proc, base = start_server(path, "--max-queue", "1", "--max-batch", "1", log=tmp_path / "busy.log")
    body = BREAD.replace('"max_tokens": 3', '"max_tokens": 24').encode()
    try:
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda _: post(base, "/v1/chat/completions", body), range(8)))
    finally:
        stop_server(proc)
    statuses = sorted(status for status, _ in got)
    assert statuses[0] == 200 and statuses[-1] == 429 and set(statuses) == {200, 429}
    busy = next(reply for status, reply in got if status == 429)
    assert "server busy" in busy["error"]["message"]
