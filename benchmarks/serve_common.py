"""Shared parts of the serve benchmarks: the workload, the small test guard, server processes from any checkout,
their process groups and memory."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HARMLENS_TEST_DATA", ROOT.parent / "shared" / "data"))
HISTORY = [
    {"role": "user", "content": "What is the capital of Peru?"},
    {"role": "assistant", "content": "Lima."},
    {"role": "user", "content": "Suggest a name for a pet turtle"},
    {"role": "assistant", "content": "Shelly."},
]


def instructions(kind: str, n: int) -> list[str]:
    """The first n held-out (val) instructions of ../shared/data/<kind>/<kind>_val.json."""
    rows = json.loads((DATA / kind / f"{kind}_val.json").read_text())
    return [r["instruction"] for r in rows[:n]]


def workload(n: int) -> list[tuple[str, list[dict]]]:
    """n (kind, messages): a quarter each harmful, harmless, harmful in turn 3, harmful turn 1 then harmless."""
    harmful, harmless = instructions("harmful", n), instructions("harmless", n)
    out = []
    for i in range(n):
        h, ok = harmful[i % len(harmful)], harmless[i % len(harmless)]
        kind = ("harmful", "harmless", "multi-turn harmful", "multi-turn harmless")[i % 4]
        messages = {
            "harmful": [{"role": "user", "content": h}],
            "harmless": [{"role": "user", "content": ok}],
            "multi-turn harmful": HISTORY + [{"role": "user", "content": h}],
            "multi-turn harmless": [
                {"role": "user", "content": h},
                {"role": "assistant", "content": "I'm sorry, I can't help with that."},
                {"role": "user", "content": ok},
            ],
        }[kind]
        out.append((kind, messages))
    return out


def load_guard(path: Path | None, folder: Path):
    """(model, guard, guard file): the given guard file, or the small test guard fitted now (embedded SmolLM2,
    layers 8, 16, 24, 24 + 24 training prompts, alpha at 10% FPR)."""
    from harmlens.guards import CentroidConfig, LatentGuard
    from harmlens.io import load_tensors
    from harmlens.probes import load_model

    if path is None:
        model = load_model(device="cpu")
        train = [json.loads((DATA / k / f"{k}_train.json").read_text()) for k in ("harmful", "harmless")]
        fit = [[r["instruction"] for r in rows[:24]] for rows in train]
        guard = LatentGuard.fit(model, *fit, CentroidConfig(layers=(8, 16, 24), target_fpr=0.1))
        return model, guard, guard.save(folder / "guard.safetensors")
    model = load_model(load_tensors(path)[1]["model"], device="cpu")
    return model, LatentGuard.load(path, model), path


def start(guard: Path, *extra: str, root: Path = ROOT, deadline: float = 600) -> tuple[subprocess.Popen, str]:
    """A serve process of the checkout at `root` on a free 127.0.0.1 port, once /health answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = Path(tempfile.mkstemp(suffix=".log")[1])
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, "-m", "harmlens.guards", "serve", str(guard), "--port", str(port), "--device", "cpu"]
    proc = subprocess.Popen([*cmd, *extra], cwd=root, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    base, end = f"http://127.0.0.1:{port}", time.monotonic() + deadline
    while time.monotonic() < end and proc.poll() is None:
        try:
            with urllib.request.urlopen(base + "/health", timeout=2):
                return proc, base
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"server did not start: {log.read_text()[-1500:]}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 20 s."""
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def rss_mb(pid: int) -> float:
    """Resident memory of a process (MB), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tree_rss_mb(pid: int) -> float:
    """Resident memory (MB) of a process and all its descendants (vLLM: launcher, API server, engine core)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += rss_mb(p)
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL after 30 s."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
