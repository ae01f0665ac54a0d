"""Streaming load on the guarded HF server as deployers measure it: TTFT, p50/p95 latency and throughput for 1, 8 and
32 concurrent streaming clients, guarded vs unguarded at the same moments, verdicts vs offline `guard(...)`.

    OMP_NUM_THREADS=1 PYTHONPATH=. nice python3 benchmarks/serve_load.py [--guard G] [--root CHECKOUT]
        [--levels 1,8,32] [--requests 4,16,32] [--max-tokens 32] [--out DIR]

Starts `python -m harmlens.guards serve` twice (guarded and --unguarded) from the checkout at --root (default this
one; point it at an export of main to measure the server before a change), as real processes on 127.0.0.1. At each
level every client thread streams its items with the official `openai` client to both servers, alternating which
goes first, so load spikes on a shared machine hit both alike. TTFT is the time to the first chunk with content.
The reference for the fallback's TTFT target is one forward of the first 8 prompts as one left-padded batch, timed
in this process before the servers start (median of 3). Without --guard it fits the small test guard.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_common import ROOT, load_guard, pct, start, stop, workload  # noqa: E402


def one_forward(model, guard, work, n: int = 8) -> float:
    """Median seconds of one forward of the first n prompts as one left-padded batch (the TTFT reference)."""
    import torch

    from harmlens.runtime import left_pad, pad_id, runnable_model

    ids = [list(guard.prepare(m)[0].input_ids) for _, m in work[:n]]
    enc = left_pad(ids, pad_id(model.tokenizer))
    runner, times = runnable_model(model), []
    with torch.no_grad():
        for _ in range(4):
            t0 = time.perf_counter()
            runner(**enc)
            times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def streamed(client, model: str, messages: list, max_tokens: int) -> dict:
    """One streamed request: TTFT, total latency, text, finish_reason and verdict (or the error)."""
    t0, first, parts, finish, verdict = time.perf_counter(), None, [], None, None
    try:
        for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, stream=True):
            choice = chunk.choices[0] if chunk.choices else None
            if choice is not None and choice.delta.content:
                first = first if first is not None else time.perf_counter() - t0
                parts.append(choice.delta.content)
            if choice is not None and choice.finish_reason:
                finish, verdict = choice.finish_reason, (chunk.model_extra or {}).get("harmlens")
    except Exception as exc:  # noqa: BLE001 - counted as an error
        return {"error": f"{type(exc).__name__}: {exc}"[:200], "latency": time.perf_counter() - t0}
    total = time.perf_counter() - t0
    return {
        "ttft": first if first is not None else total,
        "latency": total,
        "text": "".join(parts),
        "finish": finish,
        "harmlens": verdict,
    }


def level(bases: dict[str, str], name: str, work, clients: int, max_tokens: int, timeout: float) -> tuple[dict, float]:
    """Records per mode for `work` sent by `clients` threads, each item to both servers (alternating order)."""
    import openai

    made = {m: openai.OpenAI(base_url=b + "/v1", api_key="-", max_retries=0, timeout=timeout) for m, b in bases.items()}

    def both(args):
        i, (kind, messages) = args
        order = list(bases) if i % 2 == 0 else list(reversed(bases))
        return {mode: {"kind": kind, **streamed(made[mode], name, messages, max_tokens)} for mode in order}

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        pairs = list(pool.map(both, enumerate(work)))
    return {mode: [p[mode] for p in pairs] for mode in bases}, time.perf_counter() - t0


def summary(recs: list[dict], wall: float, tok) -> dict:
    """TTFT and latency percentiles, errors, blocked count and tokens/s (this mode's tokens over the level's wall)."""
    ok = [r for r in recs if "error" not in r]
    tokens = sum(
        len(tok(r["text"], add_special_tokens=False)["input_ids"]) for r in ok if r["finish"] != "content_filter"
    )
    return {
        "requests": len(recs),
        "errors": len(recs) - len(ok),
        "blocked": sum(r["finish"] == "content_filter" for r in ok),
        "ttft_p50_s": round(pct([r["ttft"] for r in ok], 0.5), 3),
        "ttft_p95_s": round(pct([r["ttft"] for r in ok], 0.95), 3),
        "p50_s": round(pct([r["latency"] for r in ok], 0.5), 3),
        "p95_s": round(pct([r["latency"] for r in ok], 0.95), 3),
        "tokens_per_s": round(tokens / wall, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--guard", type=Path, default=None)
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout whose server is measured")
    parser.add_argument("--levels", default="1,8,32", help="concurrent streaming clients per level")
    parser.add_argument("--requests", default="4,16,32", help="requests per level (each to both servers)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--out", type=Path, default=None, help="folder for load.json")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model, guard, args.guard = load_guard(args.guard, Path(tempfile.mkdtemp()))
    levels = [int(x) for x in args.levels.split(",")]
    counts = [int(x) for x in args.requests.split(",")]
    work_all = workload(max(counts))
    offline = guard([m for _, m in work_all])
    forward8 = one_forward(model, guard, work_all)
    name = str(guard.metadata["model"])
    report: dict = {
        "date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
        "root": str(args.root),
        "max_tokens": args.max_tokens,
        "cpus": os.cpu_count(),
        "forward_8_prompts_s": round(forward8, 3),
        "levels": {},
    }
    procs, bases = [], {}
    try:
        for mode, extra in (("guarded", ()), ("unguarded", ("--unguarded",))):
            proc, bases[mode] = start(
                args.guard, "--max-batch", "32", "--max-tokens", str(args.max_tokens), *extra, root=args.root
            )
            procs.append(proc)
        for clients, count in zip(levels, counts):
            load0 = os.getloadavg()[0]
            records, wall = level(bases, name, work_all[:count], clients, args.max_tokens, args.timeout)
            entry = {mode: summary(recs, wall, model.tokenizer) for mode, recs in records.items()}
            got = [r.get("harmlens") or {} for r in records["guarded"]]
            entry["verdicts_equal_offline"] = (
                f"{sum(g.get('harmful') == v.harmful for g, v in zip(got, offline))}/{count}"
            )
            diffs = [abs(g["score"] - v.score) for g, v in zip(got, offline) if g.get("score") is not None]
            entry["max_abs_score_diff"] = max(diffs, default=float("nan"))
            entry["wall_s"], entry["loadavg_1m"] = round(wall, 1), (load0, os.getloadavg()[0])
            report["levels"][clients] = entry
            print(json.dumps({clients: entry}), flush=True)
        for mode, base in bases.items():
            with urllib.request.urlopen(base + "/health") as r:
                report[f"health_{mode}"] = json.loads(r.read())
    finally:
        for proc in procs:
            stop(proc)
    eight = report["levels"].get(8)
    if eight:
        report["ttft8_over_forward"] = round(eight["guarded"]["ttft_p50_s"] / forward8, 2)
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "load.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
