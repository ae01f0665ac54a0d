"""Issue-19: the Latent Guard inside vLLM vs the same vLLM engine serving the same prompts unguarded (target <= 10%).

One engine, float32; the unguarded side runs with the guard's hooks removed (plain vLLM), the guarded side reads the
guard's positions from vLLM's own prefill and decides after it. The prefix cache is emptied before every timed run so
both sides compute every prefill. Rounds alternate unguarded / guarded; medians are reported.
The unguarded side is plain `LLM.generate` with the same sampling settings (greedy, same stop ids, no detokenizing).
1. throughput: 32 harmless prompts the guard allows (both sides make the same tokens) x 32 new tokens, one batch
2. latency: 8 of them one at a time, 32 new tokens each (per-request overhead of the guard)
3. mixed: 16 harmful + 16 harmless (blocked prompts stop after their prefill), for the record

Run: /work/venv-vllm/bin/python benchmarks/vllm_guard_perf.py [--rounds 3] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def instructions(kind: str, n: int, start: int) -> list[str]:
    """Instructions of the shared data (../shared/data/<kind>/<kind>_train.json)."""
    path = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / kind / f"{kind}_train.json"
    return [r["instruction"] for r in json.loads(path.read_text())[start : start + n]]


def timed(fn) -> float:
    """Seconds one call takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    """Fit a small guard, start one vLLM engine, time both sides, print a JSON report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=32)
    args = ap.parse_args()

    from harmlens.guards import CentroidConfig, LatentGuard
    from harmlens.guards.vllm_guard import VLLMGuardedModel
    from harmlens.probes import load_model
    from harmlens.runtime.chat import chat_format

    model = load_model(device="cpu")
    config = CentroidConfig(layers=(8, 16, 24), target_fpr=0.1)
    guard = LatentGuard.fit(model, instructions("harmful", 24, 0), instructions("harmless", 24, 0), config)
    guarded = VLLMGuardedModel(model, guard, max_model_len=512)
    llm, fmt, n = guarded.backend.llm, chat_format(model), args.new_tokens
    pool, harmful = instructions("harmless", 48, 200), instructions("harmful", 16, 200)
    allowed = [r.instruction for r in guarded.generate(pool, max_new_tokens=1) if not r.blocked]
    benign = allowed[:32]  # none blocked: both sides decode the same tokens
    mixed = harmful + benign[:16]
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    plain = SamplingParams(max_tokens=n, temperature=0.0, stop_token_ids=guarded.backend.stops, detokenize=False)

    def unguarded(prompts: list[str]) -> list[list[int]]:
        token_prompts = [TokensPrompt(prompt_token_ids=list(p.input_ids)) for p in fmt.render_many(prompts)]
        return [list(o.outputs[0].token_ids) for o in llm.generate(token_prompts, plain, use_tqdm=False)]

    def guarded_run(prompts: list[str]) -> None:
        guarded.generate(prompts, max_new_tokens=n)

    def measure(kind: str, prompts: list[str], one_at_a_time: bool = False) -> float:
        if kind == "unguarded":
            llm.collective_rpc("hl_uninstall")
        else:
            llm.collective_rpc("hl_install", args=(guard.layers,))
        guarded.reset_prefix_cache()
        run = unguarded if kind == "unguarded" else guarded_run
        if one_at_a_time:
            return statistics.median(timed(lambda p=p: run([p])) for p in prompts)
        return timed(lambda: run(prompts))

    for kind in ("unguarded", "guarded"):  # warm-up
        measure(kind, benign[:4])
    check = guarded.generate(benign, max_new_tokens=n)
    texts = [guarded._decode(ids) for ids in unguarded(benign)]
    same = sum(r.text == t for r, t in zip(check, texts))
    rows: dict[str, dict[str, list[float]]] = {}
    for _ in range(args.rounds):
        for kind in ("unguarded", "guarded"):
            for name, prompts, single in (
                ("batch32", benign, False),
                ("single", benign[:8], True),
                ("mixed", mixed, False),
            ):
                rows.setdefault(name, {}).setdefault(kind, []).append(measure(kind, prompts, single))
    report: dict = {
        "prompts": {"batch32": len(benign), "single": 8, "mixed": len(mixed)},
        "new_tokens": n,
        "rounds": args.rounds,
        "blocked_in_mixed": sum(r.blocked for r in guarded.generate(mixed, max_new_tokens=1)),
        "blocked_in_benign": sum(r.blocked for r in check),
        "harmless_pool_blocked": len(pool) - len(allowed),
        "guarded_replies_equal_unguarded": f"{same}/{len(benign)}",
    }
    for name, sides in rows.items():
        u, g = statistics.median(sides["unguarded"]), statistics.median(sides["guarded"])
        entry = {"unguarded_s": round(u, 3), "guarded_s": round(g, 3), "overhead": f"{100 * (g / u - 1):+.1f}%"}
        if name == "batch32":
            tokens = len(benign) * n  # upper bound: the same greedy tokens on both sides (stop tokens end some early)
            entry |= {"unguarded_tok_s": round(tokens / u, 1), "guarded_tok_s": round(tokens / g, 1)}
        report[name] = entry
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
