"""One real guarded server per backend for the integration tests (LiteLLM, NeMo Guardrails, garak), each tool run in
its own venv: `guarded_server` is parametrized over "hf" (harmlens's own server) and "vllm" (vLLM's OpenAI server
with the guard plugin, skipped without vllm), each started once per session.

The servers run from this python (`python -m harmlens.guards serve [--backend vllm]`, the embedded model with the
small centroid guard of tests/guards/serve); every tool runs as a subprocess of the python its venv names
(serve_helpers.tool_python), so none of them has to be installed beside harmlens. The test modules skip before this
fixture starts when their venv is absent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from integration_helpers import ALLOWED, FLAGGED, MODEL, GuardedServer
from serve_helpers import API_KEY, ROOT, free_port, start_server, stop_server


@pytest.fixture(scope="session")
def integration_guard(model, harmful_prompts, harmless_prompts, tmp_path_factory):
    """(guard, file) of the centroid guard both servers serve (layers 8, 16, 24, 24 + 24 prompts, 10% FPR)."""
    from harmlens.guards import CentroidConfig, LatentGuard

    config = CentroidConfig(layers=(8, 16, 24), target_fpr=0.1)
    guard = LatentGuard.fit(model, harmful_prompts, harmless_prompts, config)
    return guard, guard.save(tmp_path_factory.mktemp("integrations") / "guard.safetensors")


@pytest.fixture(scope="session", params=["hf", "vllm"])
def guarded_server(request, integration_guard, tmp_path_factory):
    """A real guarded server process with an API key: harmlens's own (hf) or the plugin-guarded vLLM server."""
    guard, path = integration_guard
    folder = tmp_path_factory.mktemp(f"server-{request.param}")
    if request.param == "hf":
        pytest.importorskip("fastapi")
        proc, base = start_server(path, "--api-key", API_KEY, "--max-tokens", "64", log=folder / "server.log")
        stop = lambda: stop_server(proc)  # noqa: E731
    else:
        from harmlens.runtime.vllm_engine import vllm_available

        if not vllm_available():
            pytest.skip("vllm is not importable (pip install harmlens[vllm]): the vllm recipe runs are skipped")
        proc, base = _start_vllm(path, folder / "vllm.log")
        stop = lambda: _stop_group(proc)  # noqa: E731
    try:
        server = GuardedServer(base, guard, request.param)
        assert server.flagged(FLAGGED) and not server.flagged(ALLOWED), "the test guard no longer separates prompts"
        yield server
    finally:
        stop()


def _start_vllm(guard, log) -> tuple[subprocess.Popen, str]:
    """The launcher's vLLM server (float32, 1 GiB KV cache) serving MODEL with the API key; (process, base URL)."""
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HARMLENS_VLLM_ARGS": "--dtype float32 --max-model-len 1024"}
    cmd = [sys.executable, "-m", "harmlens.guards", "serve", str(guard), "--backend", "vllm", "--port", str(port)]
    cmd += ["--served-name", MODEL, "--api-key", API_KEY]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )
    base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 300
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop_group(proc)
            raise RuntimeError(f"vLLM's server did not start: {log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(base + "/health", timeout=2).close()
            return proc, base
        except OSError:
            time.sleep(1)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the launcher's process group (vLLM's server and engine core), SIGKILL after 30 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
