"""Bounded load test of the guarded server on 127.0.0.1: latency guarded vs unguarded, errors, verdicts vs offline.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/serve_load.py [--guard G] [--clients 16] [--requests 200]
        [--max-tokens 8] [--out DIR]

Starts `python -m harmlens.guards serve` twice as real processes on free 127.0.0.1 ports (guarded and --unguarded),
sends every mixed request (harmful, harmless, multi-turn) to both from --clients threads with the official `openai`
client (alternating which goes first, so load spikes on a shared machine hit both alike), and stops both servers. Every guarded verdict is compared with the offline `guard(conversation)`
verdict. It also sends the bad requests of the reliability list and records status and reason. Without --guard it fits
the small test guard (embedded SmolLM2, layers 8,16,24, 24 + 24 training prompts, alpha at 10% FPR). Stops by itself:
each phase is bounded by --deadline seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
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


def start(guard: Path, *extra: str, deadline: float) -> tuple[subprocess.Popen, str, Path]:
    """A serve process on a free 127.0.0.1 port, once /health answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = Path(tempfile.mkstemp(suffix=".log")[1])
    cmd = [sys.executable, "-m", "harmlens.guards", "serve", str(guard), "--port", str(port), "--device", "cpu"]
    proc = subprocess.Popen([*cmd, *extra], cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
    base, end = f"http://127.0.0.1:{port}", time.monotonic() + deadline
    while time.monotonic() < end and proc.poll() is None:
        try:
            with urllib.request.urlopen(base + "/health", timeout=2):
                return proc, base, log
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


def run_load(bases: dict[str, str], model: str, work, clients: int, max_tokens: int, deadline: float) -> dict:
    """Per mode, one record per request (kind, latency, error, finish_reason, verdict). Each client sends every item
    to both servers, alternating which goes first, so a busy moment on a shared machine hits both modes alike."""
    import openai

    made = {
        m: openai.OpenAI(base_url=b + "/v1", api_key="-", max_retries=0, timeout=deadline) for m, b in bases.items()
    }

    def once(mode: str, kind: str, messages: list) -> dict:
        t0 = time.perf_counter()
        try:
            r = made[mode].chat.completions.create(model=model, messages=messages, max_tokens=max_tokens)
            rec = {"finish": r.choices[0].finish_reason, "harmlens": (r.model_extra or {}).get("harmlens")}
        except Exception as exc:  # noqa: BLE001 - counted as an error
            rec = {"error": f"{type(exc).__name__}: {exc}"[:200]}
        return {"kind": kind, "latency": time.perf_counter() - t0, **rec}

    def both(args):
        i, (kind, messages) = args
        order = list(bases) if i % 2 == 0 else list(reversed(bases))
        return {mode: once(mode, kind, messages) for mode in order}

    with ThreadPoolExecutor(clients) as pool:
        pairs = list(pool.map(both, enumerate(work)))
    return {mode: [p[mode] for p in pairs] for mode in bases}


BAD = {  # name: body
    "malformed JSON": b'{"model": "M", "messages": [',
    "missing messages": b'{"model": "M"}',
    "unknown role": b'{"model": "M", "messages": [{"role": "wizard", "content": "hi"}]}',
    "empty content": b'{"model": "M", "messages": [{"role": "user", "content": "  "}]}',
    "1 MB message": b'{"model": "M", "messages": [{"role": "user", "content": "' + b"a" * 1_000_000 + b'"}]}',
    "non-UTF-8 bytes": b'{"model": "M", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
    "image for a text model": b'{"model": "M", "messages": [{"role": "user", "content": '
    b'[{"type": "image_url", "image_url": {"url": "data:,"}}]}]}',
    "n > 1": b'{"model": "M", "n": 2, "messages": [{"role": "user", "content": "hi"}]}',
    "unknown model name": b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}',
    "over the context (9000 tokens)": b'{"model": "M", "messages": [{"role": "user", "content": "'
    + b"tok " * 9000
    + b'"}]}',
    "last turn not a user turn": b'{"model": "M", "messages": [{"role": "user", "content": "hi"}, '
    b'{"role": "assistant", "content": "yo"}]}',
}


def bad_requests(base: str, model: str) -> list[tuple[str, int, str]]:
    """(request, status, reason) for each bad request."""
    out = []
    for name, body in BAD.items():
        req = urllib.request.Request(
            base + "/v1/chat/completions", data=body.replace(b'"M"', json.dumps(model).encode())
        )
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                out.append((name, r.status, "accepted"))
        except urllib.error.HTTPError as exc:
            out.append((name, exc.code, json.loads(exc.read())["error"]["message"][:110]))
    return out


def pct(values: list[float], q: float) -> float:
    """The q-quantile (inclusive method) of values."""
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1] if len(values) > 1 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--guard", type=Path, default=None)
    parser.add_argument("--clients", type=int, default=16, help="client threads; each alternates between the servers")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--deadline", type=float, default=900, help="seconds per phase before giving up")
    parser.add_argument("--out", type=Path, default=None, help="folder for load.json")
    args = parser.parse_args()
    import torch

    from harmlens.guards import CentroidConfig, LatentGuard
    from harmlens.io import load_tensors
    from harmlens.probes import load_model

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    tmp = Path(tempfile.mkdtemp())
    if args.guard is None:
        model = load_model(device="cpu")
        train = [json.loads((DATA / k / f"{k}_train.json").read_text()) for k in ("harmful", "harmless")]
        fit = [[r["instruction"] for r in rows[:24]] for rows in train]
        guard = LatentGuard.fit(model, *fit, CentroidConfig(layers=(8, 16, 24), target_fpr=0.1))
        args.guard = guard.save(tmp / "guard.safetensors")
    else:
        model = load_model(load_tensors(args.guard)[1]["model"], device="cpu")
        guard = LatentGuard.load(args.guard, model)
    name = str(load_tensors(args.guard)[1]["model"])
    work = workload(args.requests)
    offline = guard([m for _, m in work])
    results, table, procs, bases = {}, {}, [], {}
    try:
        for mode, extra in (("guarded", ()), ("unguarded", ("--unguarded",))):
            proc, bases[mode], _log = start(args.guard, "--max-batch", "16", *extra, deadline=args.deadline)
            procs.append(proc)
        t0 = time.perf_counter()
        records = run_load(bases, name, work, args.clients, args.max_tokens, args.deadline)
        wall = time.perf_counter() - t0
        health = {}
        for mode, base in bases.items():
            with urllib.request.urlopen(base + "/health") as r:
                health[mode] = json.loads(r.read())
        table["bad_requests"] = bad_requests(bases["guarded"], name)
    finally:
        for proc in procs:
            stop(proc)
    for mode, recs in records.items():
        lat = [r["latency"] for r in recs if "error" not in r]
        results[mode] = {
            "requests": len(recs),
            "errors": sum("error" in r for r in recs),
            "p50_s": round(pct(lat, 0.5), 3),
            "p95_s": round(pct(lat, 0.95), 3),
            "batches": health[mode]["batches"],
            "largest_batch": health[mode]["largest_batch"],
        }
    results["wall_s_both"] = round(wall, 1)
    got = [r.get("harmlens") or {} for r in records["guarded"]]
    same = [g.get("harmful") == v.harmful for g, v in zip(got, offline)]
    diffs = [abs(g["score"] - v.score) for g, v in zip(got, offline) if g.get("score") is not None]
    by_kind: dict[str, list[int]] = {}
    for (kind, _), v in zip(work, offline):
        by_kind.setdefault(kind, []).append(int(v.harmful))
    results["guarded"] |= {
        "verdicts_equal_offline": f"{sum(same)}/{len(same)}",
        "max_abs_score_diff": max(diffs, default=float("nan")),
        "blocked_rate_by_kind": {k: round(sum(v) / len(v), 2) for k, v in by_kind.items()},
        "errors_seen": sorted({r["error"] for recs in records.values() for r in recs if "error" in r})[:3],
    }
    load = os.getloadavg()
    report = {
        "clients": args.clients,
        "max_tokens": args.max_tokens,
        "cpus": os.cpu_count(),
        "loadavg": load,
        **results,
        **table,
    }
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "load.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
