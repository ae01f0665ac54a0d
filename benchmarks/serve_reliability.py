"""Reliability run of the guarded server: N requests from many clients mixing allowed, flagged, malformed and
cancelled-mid-stream requests; counts 5xx, lost and duplicated responses, verdicts vs offline, RSS, /health.

    OMP_NUM_THREADS=1 PYTHONPATH=. nice python3 benchmarks/serve_reliability.py [--guard G] [--root CHECKOUT]
        [--requests 500] [--clients 16] [--max-tokens 8] [--out DIR] [--backend hf|vllm]

Request i is, by i % 10: 0-3 a harmless prompt, 4-5 a harmful one (half of these streamed, half not), 6-7 a
malformed body (the bad requests below, raw HTTP), 8-9 a stream the client closes after its first content chunk.
A thread polls /health every 0.25 s throughout. Every chat verdict is compared with the offline `guard(...)`.

--backend vllm runs the same mix against the plugin-guarded `vllm serve` (`serve --backend vllm`, float32, 1 GiB KV
cache): verdicts are read from its `x-harmlens-verdict` / `x-harmlens-score` headers, the decision is compared with
offline (vLLM's and HF's float32 kernels differ in the score by ~1e-3) and RSS is that of the whole server process
tree (launcher, API server, engine core). vLLM validates the malformed bodies itself: some it accepts (n > 1, tools).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_common import (  # noqa: E402
    ROOT,
    free_port,
    instructions,
    load_guard,
    rss_mb,
    start,
    stop,
    stop_group,
    tree_rss_mb,
)

BAD = {  # name: body ("M" becomes the served model's name)
    "malformed JSON": b'{"model": "M", "messages": [',
    "missing messages": b'{"model": "M"}',
    "unknown role": b'{"model": "M", "messages": [{"role": "wizard", "content": "hi"}]}',
    "empty content": b'{"model": "M", "messages": [{"role": "user", "content": "  "}]}',
    "non-UTF-8 bytes": b'{"model": "M", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
    "n > 1": b'{"model": "M", "n": 2, "messages": [{"role": "user", "content": "hi"}]}',
    "tools": b'{"model": "M", "tools": [{"type": "function", "function": {"name": "f"}}], '
    b'"messages": [{"role": "user", "content": "hi"}]}',
    "unknown model name": b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}',
    "last turn not a user turn": b'{"model": "M", "messages": [{"role": "user", "content": "hi"}, '
    b'{"role": "assistant", "content": "yo"}]}',
}


def raw_post(base: str, body: bytes) -> tuple[int, str]:
    """(status, error message) of a raw POST to /v1/chat/completions."""
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=300)
    try:
        conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        reply = conn.getresponse()
        data = reply.read()
        try:
            return reply.status, json.loads(data).get("error", {}).get("message", "")
        except ValueError:
            return reply.status, data[:100].decode(errors="replace")
    finally:
        conn.close()


class HealthPoller(threading.Thread):
    """GETs /health every 0.25 s until stopped: answers, failures, the slowest answer and the server's RSS."""

    def __init__(self, base: str, pid: int, rss=None) -> None:
        super().__init__(daemon=True)
        self.base, self.ok, self.failed, self.slowest, self.halt = base, 0, 0, 0.0, threading.Event()
        self.pid, self.rss_of = pid, rss or rss_mb
        self.rss: list[float] = []

    def run(self) -> None:
        while not self.halt.is_set():
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=5) as r:
                    body = r.read()  # vLLM's /health: an empty 200
                    self.ok += r.status == 200 and (not body or json.loads(body)["status"] == "ok")
            except Exception:  # noqa: BLE001 - counted
                self.failed += 1
            self.slowest = max(self.slowest, time.perf_counter() - t0)
            self.rss.append(self.rss_of(self.pid))
            self.halt.wait(0.25)


def header_verdict(headers) -> dict | None:
    """The vLLM plugin's verdict headers as {"harmful", "blocked", "score"} (None without them)."""
    label = headers.get("x-harmlens-verdict")
    if label is None:
        return None
    score = headers.get("x-harmlens-score")
    flagged = label != "allowed"
    return {"harmful": flagged, "blocked": flagged, "score": float(score) if score else None, "label": label}


def start_vllm(guard: Path, name: str, root: Path) -> tuple[subprocess.Popen, str]:
    """The plugin-guarded vLLM server (`serve --backend vllm`) of the checkout at `root`, in its own process group."""
    port, log = free_port(), Path(tempfile.mkstemp(suffix=".log")[1])
    env = {**os.environ, "PYTHONPATH": str(root), "VLLM_CPU_KVCACHE_SPACE": "1"}
    env["HARMLENS_VLLM_ARGS"] = "--dtype float32 --max-model-len 1024"
    cmd = [sys.executable, "-m", "harmlens.guards", "serve", str(guard), "--backend", "vllm", "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--served-name", name],
        cwd=root,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base, end = f"http://127.0.0.1:{port}", time.monotonic() + 600
    while time.monotonic() < end and proc.poll() is None:
        try:
            with urllib.request.urlopen(base + "/health", timeout=2):
                return proc, base
        except OSError:
            time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit(f"vLLM's server did not start: {log.read_text()[-1500:]}")


def one(client, base: str, name: str, i: int, prompt: list | None, max_tokens: int) -> dict:
    """Request i of the mix: its kind, status, response ids, finish count and verdict."""
    import openai

    kind = ("allowed",) * 4 + ("flagged",) * 2 + ("malformed",) * 2 + ("cancelled",) * 2
    rec: dict = {"i": i, "kind": kind[i % 10]}
    try:
        if rec["kind"] == "malformed":
            body = list(BAD.values())[i % len(BAD)].replace(b'"M"', json.dumps(name).encode())
            rec["status"], rec["message"] = raw_post(base, body)
            return rec
        stream = rec["kind"] == "cancelled" or i % 20 < 10
        create = client.chat.completions.with_raw_response.create
        if not stream:
            raw = create(model=name, messages=prompt, max_tokens=max_tokens)
            r = raw.parse()
            verdict = header_verdict(raw.headers) or (r.model_extra or {}).get("harmlens")
            rec.update(status=200, ids=[r.id], finishes=1, harmlens=verdict)
            return rec
        ids, finishes = set(), 0
        raw = create(model=name, messages=prompt, max_tokens=max_tokens, stream=True)
        verdict, s = header_verdict(raw.headers), raw.parse()
        for chunk in s:
            ids.add(chunk.id)
            if chunk.choices and chunk.choices[0].finish_reason:
                finishes += 1
                verdict = verdict or (chunk.model_extra or {}).get("harmlens")
            if rec["kind"] == "cancelled" and chunk.choices and chunk.choices[0].delta.content:
                s.close()
                break
        rec.update(status=200, ids=sorted(ids), finishes=finishes, harmlens=verdict)
    except openai.APIStatusError as exc:
        rec.update(status=exc.status_code, message=str(exc)[:150])
    except Exception as exc:  # noqa: BLE001 - a lost response
        rec.update(status=None, message=f"{type(exc).__name__}: {exc}"[:150])
    return rec


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--guard", type=Path, default=None)
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--backend", choices=("hf", "vllm"), default="hf", help="harmlens's server or vllm serve")
    args = parser.parse_args()
    import openai
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    _, guard, args.guard = load_guard(args.guard, Path(tempfile.mkdtemp()))
    name = str(guard.metadata["model"])
    n = args.requests
    harmless, harmful = instructions("harmless", 60), instructions("harmful", 60)
    prompts: list[list | None] = []
    for i in range(n):
        kind = i % 10
        text = harmless[i % len(harmless)] if kind < 4 or kind >= 8 else harmful[i % len(harmful)] if kind < 6 else None
        prompts.append(None if text is None else [{"role": "user", "content": text}])
    offline = dict(zip([i for i, p in enumerate(prompts) if p], guard([p for p in prompts if p])))
    vllm = args.backend == "vllm"
    if vllm:
        proc, base = start_vllm(args.guard, name, args.root)
    else:
        proc, base = start(args.guard, "--max-batch", "16", "--max-tokens", str(args.max_tokens), root=args.root)
    measure = tree_rss_mb if vllm else rss_mb
    client = openai.OpenAI(base_url=base + "/v1", api_key="-", max_retries=0, timeout=300)
    poller = HealthPoller(base, proc.pid, measure)
    try:
        for i in range(16):  # warm-up before the first RSS reading
            client.chat.completions.create(model=name, messages=prompts[i % 4] or [], max_tokens=args.max_tokens)
        rss0, load0 = measure(proc.pid), os.getloadavg()
        poller.start()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            recs = list(pool.map(lambda i: one(client, base, name, i, prompts[i], args.max_tokens), range(n)))
        wall = time.perf_counter() - t0
        time.sleep(2)
        with urllib.request.urlopen(base + "/health", timeout=10) as r:
            body = r.read()
            health = json.loads(body) if body else {"status": r.status}
        rss1 = measure(proc.pid)
    finally:
        poller.halt.set()
        stop_group(proc) if vllm else stop(proc)
    chats = [r for r in recs if r["kind"] != "malformed"]
    ids = Counter(x for r in recs for x in r.get("ids", []))
    judged = [r for r in chats if r["kind"] != "cancelled" and r.get("harmlens")]
    mismatch = [r["i"] for r in judged if r["harmlens"]["harmful"] != offline[r["i"]].harmful]
    diffs = [abs(r["harmlens"]["score"] - offline[r["i"]].score) for r in judged if r["harmlens"]["score"] is not None]
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
        "backend": args.backend,
        "root": str(args.root),
        "requests": n,
        "clients": args.clients,
        "max_tokens": args.max_tokens,
        "wall_s": round(wall, 1),
        "kinds": dict(Counter(r["kind"] for r in recs)),
        "status_by_kind": {
            k: dict(Counter(str(r.get("status")) for r in recs if r["kind"] == k))
            for k in ("allowed", "flagged", "malformed", "cancelled")
        },
        "server_errors_5xx": sum(1 for r in recs if (r.get("status") or 0) >= 500),
        "lost": sum(1 for r in recs if r.get("status") is None),
        "lost_examples": [r["message"] for r in recs if r.get("status") is None][:3],
        "duplicated_ids": sum(1 for c in ids.values() if c > 1),
        "finish_chunks_not_one": sum(1 for r in chats if r["kind"] != "cancelled" and r.get("finishes") != 1),
        "verdicts_compared": len(judged),
        "verdict_mismatches": len(mismatch),
        "max_abs_score_diff": max(diffs, default=float("nan")),
        "mean_abs_score_diff": sum(diffs) / len(diffs) if diffs else float("nan"),
        "failed_verdicts": sum(1 for r in judged if r["harmlens"].get("label") == "failed"),
        "flagged_blocked": sum(1 for r in judged if r["harmlens"]["blocked"]),
        "malformed_4xx": sum(1 for r in recs if r["kind"] == "malformed" and 400 <= (r.get("status") or 0) < 500),
        "rss_mb_before_after": (round(rss0), round(rss1)),
        "rss_mb_at_10_pct_steps": [round(poller.rss[int(k * (len(poller.rss) - 1) / 10)]) for k in range(11)],
        "health_ok": poller.ok,
        "health_failed": poller.failed,
        "health_slowest_s": round(poller.slowest, 3),
        "health_after": {
            k: health.get(k) for k in ("status", "running", "queued", "batches", "largest_batch", "decode_steps")
        },
        "loadavg_before_after": (load0, os.getloadavg()),
    }
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "reliability.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
