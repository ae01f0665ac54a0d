"""Start `python -m harmlens.guards serve` as a real process on a free 127.0.0.1 port and talk to it (test helpers)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
    """(status, JSON body) of a raw POST, error statuses included. A server may answer (413) and close before it has
    read a large body: the client's broken pipe is then ignored and the answer read."""
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    try:
        try:
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = conn.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        conn.close()


API_KEY = "test-key-123"


def tool_python(tool: str, module: str) -> tuple[str | None, str]:
    """(python, reason) of the separate venv that has `module` installed for an integration test of `tool`.

    $HARMLENS_<TOOL>_PYTHON (e.g. HARMLENS_LITELLM_PYTHON) names that venv's python; unset, ../venv-<tool>/bin/python
    beside the checkout is tried. The tools live in their own venvs because installing them would change the
    packages harmlens runs on; the harmlens server stays in this python. python is None (and reason says why) when
    there is none or it cannot find `module`, so the tests skip."""
    var = f"HARMLENS_{tool.upper()}_PYTHON"
    python = os.environ.get(var) or str(ROOT.parent / f"venv-{tool}" / "bin" / "python")
    if not (shutil.which(python) or os.access(python, os.X_OK)):
        return None, f"no {tool} venv: set {var} to the python of a venv with {tool} installed (docs/serving.md)"
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec(sys.argv[1]) is None)"
    done = subprocess.run([python, "-c", probe, module], capture_output=True, timeout=60)
    if done.returncode != 0:
        return None, f"{python} has no '{module}' module (set {var} to the python of a venv that has it)"
    return python, ""


@contextlib.contextmanager
def serve_in_thread(app) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free 127.0.0.1 port in this process; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("in-process server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
