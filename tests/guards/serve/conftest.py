"""Start `python -m harmlens.guards serve` as a real process on a free 127.0.0.1 port and wait until it answers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(guard: Path, *args: str, log: Path, timeout: float = 240) -> tuple[subprocess.Popen, str]:
    """(process, base URL) of a serve process that answers /health; raises with its log if it does not."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("HARMLENS_TEST_THREADS", "1")}
    cmd = [sys.executable, "-m", "harmlens.guards", "serve", str(guard), "--port", str(port), "--device", "cpu", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if json.loads(r.read())["status"] == "ok":
                    return proc, base
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"server did not answer within {timeout} s: {log.read_text()[-2000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    """Terminate the process (SIGTERM, then SIGKILL after 20 s)."""
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def post(base: str, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    """(status, JSON body) of a raw POST, error statuses included."""
    req = urllib.request.Request(base + path, data=body, method="POST", headers=headers or {})
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


API_KEY = "test-key-123"


@pytest.fixture(scope="module")
def fitted_guard(model, harmful_prompts, harmless_prompts):
    """A small centroid guard of the embedded model (3 fixed layers, 24 + 24 prompts, α at 10% FPR)."""
    from harmlens.guards import LatentGuard

    return LatentGuard.fit(model, harmful_prompts, harmless_prompts, layers=[8, 16, 24], target_fpr=0.1)


@pytest.fixture(scope="module")
def server(fitted_guard, tmp_path_factory):
    """(base URL, guard file) of a real guarded server process with an API key."""
    folder = tmp_path_factory.mktemp("serve")
    path = fitted_guard.save(folder / "guard.safetensors")
    proc, base = start_server(path, "--api-key", API_KEY, "--max-tokens", "64", log=folder / "server.log")
    yield base, path
    stop_server(proc)
