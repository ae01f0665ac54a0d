"""Plugin-guarded vs unguarded `vllm serve` side by side: throughput, p50/p95 latency and time to first token for 1, 8
and 32 concurrent streaming openai clients on prompts the guard allows, the two servers measured alternately.

    python benchmarks/vllm_serve_guard.py GUARD.safetensors [--model FOLDER] [--max-tokens 32] [--rounds 2] [--requests 16]

Both servers run at once (same flags; the guarded one adds the plugin and the verdict middleware) and idle while the
other is measured; each round measures guarded then unguarded, the next round the other way round. Prompts: harmless
test prompts the guarded server allows (its x-harmlens-verdict header); greedy replies of the two servers compared.
Prints a markdown table (ratios guarded / unguarded; targets: throughput >= 0.95, p95 and TTFT <= 1.10).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from serve_common import free_port, instructions  # noqa: E402  (the serve benchmarks' shared prompts and ports)


def start(guard: Path, model: str, guarded: bool, extra: list[str], log: Path) -> tuple[subprocess.Popen, int]:
    """One vLLM OpenAI server (with the plugin when guarded), its own process group."""
    from harmlens.guards.vllm_guard.launch import plugin_env, vllm_serve_command

    port = free_port()
    env = {**os.environ, **plugin_env(guard, tempfile.mkdtemp(prefix="hl-verdicts-"))}
    argv = vllm_serve_command(model, "127.0.0.1", port, guarded=guarded, served_name="m", extra=extra)
    return subprocess.Popen(argv, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True), port


def wait(proc: subprocess.Popen, port: int, log: Path, timeout: float = 600) -> None:
    """Until the server answers /health."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server on {port} did not start: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
            return
        except OSError:
            time.sleep(1)


async def one(client, prompt: str, max_tokens: int) -> tuple[float, float, int, str, str | None]:
    """(ttft s, latency s, content chunks, text, verdict header) of one streamed chat completion."""
    t0 = time.perf_counter()
    raw = await client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=max_tokens, stream=True
    )
    first, parts = None, []
    chunks = raw.parse()
    async for chunk in await chunks if inspect.isawaitable(chunks) else chunks:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            parts.append(chunk.choices[0].delta.content)
    end = time.perf_counter()
    return (first or end) - t0, end - t0, len(parts), "".join(parts), raw.headers.get("x-harmlens-verdict")


async def load(port: int, prompts: list[str], clients: int, per_client: int, max_tokens: int) -> dict:
    """`clients` concurrent clients, each sending `per_client` requests in turn; latency, TTFT and tokens/s."""
    import openai

    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=600)

    async def worker(c: int) -> list:
        return [await one(client, prompts[(c * per_client + k) % len(prompts)], max_tokens) for k in range(per_client)]

    t0 = time.perf_counter()
    rows = [r for rs in await asyncio.gather(*(worker(c) for c in range(clients))) for r in rs]
    wall = time.perf_counter() - t0
    await client.close()
    lat, ttft = sorted(r[1] for r in rows), sorted(r[0] for r in rows)
    p95 = lambda xs: xs[min(len(xs) - 1, round(0.95 * (len(xs) - 1)))]  # noqa: E731
    return {
        "tok_s": sum(r[2] for r in rows) / wall,
        "p50": statistics.median(lat),
        "p95": p95(lat),
        "ttft50": statistics.median(ttft),
        "ttft95": p95(ttft),
        "n": len(rows),
    }


def main() -> None:
    """Start both servers, pick allowed prompts, measure alternately, print the table."""
    from harmlens.runtime import resolve_model_path

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("guard", type=Path)
    p.add_argument("--model", default=None, help="HF folder (default: the guard file's model)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--requests", type=int, default=16, help="requests per measurement (at least one per client)")
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--vllm-args", default="--dtype float32 --max-model-len 1024", help="extra vLLM server arguments")
    args = p.parse_args()
    from harmlens.guards import LatentGuard

    model = resolve_model_path(args.model or LatentGuard.load(args.guard).metadata["model"])[0]
    logs = Path(tempfile.mkdtemp(prefix="hl-bench-"))
    servers = {g: start(args.guard, model, g, args.vllm_args.split(), logs / f"{g}.log") for g in (True, False)}
    try:
        for g, (proc, port) in servers.items():
            wait(proc, port, logs / f"{g}.log")
        pool = instructions("harmless", 64)
        checks = asyncio.run(asyncio.wait_for(_replies(servers, pool, args.max_tokens), 1800))
        prompts = [q for q, (g, u, verdict) in zip(pool, checks) if verdict == "allowed"]
        same = sum(g == u for q, (g, u, verdict) in zip(pool, checks) if verdict == "allowed")
        print(
            f"{len(prompts)}/{len(pool)} prompts allowed; greedy replies equal guarded vs unguarded: "
            f"{same}/{len(prompts)}",
            flush=True,
        )
        table = []
        for clients in [int(x) for x in args.clients.split(",")]:
            per = max(1, args.requests // clients)
            got: dict[bool, list[dict]] = {True: [], False: []}
            for r in range(args.rounds):
                for g in (True, False) if r % 2 == 0 else (False, True):
                    got[g].append(asyncio.run(load(servers[g][1], prompts, clients, per, args.max_tokens)))
            table.append((clients, {g: {k: statistics.median(x[k] for x in v) for k in v[0]} for g, v in got.items()}))
            print(clients, table[-1][1], flush=True)
        print("\n| clients | tokens/s guarded / unguarded (ratio) | p95 latency s (ratio) | TTFT p50 s (ratio) |")
        print("|---|---|---|---|")
        for clients, m in table:
            g, u = m[True], m[False]
            print(
                f"| {clients} | {g['tok_s']:.1f} / {u['tok_s']:.1f} ({g['tok_s'] / u['tok_s']:.3f}x) | "
                f"{g['p95']:.2f} / {u['p95']:.2f} ({g['p95'] / u['p95']:.3f}x) | "
                f"{g['ttft50']:.3f} / {u['ttft50']:.3f} ({g['ttft50'] / u['ttft50']:.3f}x) |"
            )
    finally:
        for proc, _ in servers.values():
            os.killpg(proc.pid, signal.SIGTERM)
        for proc, _ in servers.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


async def _replies(servers: dict, pool: list[str], max_tokens: int) -> list[tuple[str, str, str | None]]:
    import openai

    out = []
    for g in (True, False):
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{servers[g][1]}/v1", api_key="x", max_retries=0)
        out.append(await asyncio.gather(*(one(client, q, max_tokens) for q in pool)))
        await client.close()
    return [(g[3], u[3], g[4]) for g, u in zip(*out)]


if __name__ == "__main__":
    main()
