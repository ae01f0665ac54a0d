"""Issue-19/27: the Latent Guard inside vLLM vs the same vLLM engine serving the same prompts unguarded (target <= 10%),
and harmlens's one vLLM call site (VLLMBackend.generate_ids, which steps the engine itself) vs plain `LLM.generate`.

One engine, float32, three sides on the same prompts and sampling settings (greedy, same stop ids, no detokenizing):
- llm_generate: plain vLLM `LLM.generate`, the guard's hooks removed;
- engine: `VLLMBackend.generate_ids` without a read (harmlens's step loop), the hooks removed;
- guarded: `VLLMGuardedModel.generate` (the engine's step loop with the guard's prefill read).
The prefix cache is emptied before every timed run so every side computes every prefill. Rounds alternate the sides;
medians (and minima, the runs least disturbed on a shared CPU) are reported.
1. throughput: 32 harmless prompts the guard allows (all sides make the same tokens) x 32 new tokens, one batch
2. latency: 8 of them one at a time, 32 new tokens each (per-request overhead)
3. mixed: 16 harmful + 16 harmless (blocked prompts stop after their prefill), for the record

Run: python3 benchmarks/vllm_guard_perf.py [--rounds 3] [--new-tokens 32]
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

    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from harmlens.guards import CentroidConfig, LatentGuard
    from harmlens.guards.vllm_guard import VLLMGuardedModel
    from harmlens.probes import load_model
    from harmlens.runtime import GenerationConfig, cut_at_stop
    from harmlens.runtime.chat import chat_format

    model = load_model(device="cpu")
    guard_config = CentroidConfig(layers=(8, 16, 24), target_fpr=0.1)
    guard = LatentGuard.fit(model, instructions("harmful", 24, 0), instructions("harmless", 24, 0), guard_config)
    guarded = VLLMGuardedModel(model, guard, max_model_len=512)
    engine, fmt, n = guarded.backend, chat_format(model), args.new_tokens
    config = GenerationConfig(max_new_tokens=n, progress=False)
    pool, harmful = instructions("harmless", 48, 200), instructions("harmful", 16, 200)
    allowed = [r.instruction for r in guarded.generate(pool, max_new_tokens=1) if not r.blocked]
    benign = allowed[:32]  # none blocked: every side decodes the same tokens
    mixed = harmful + benign[:16]
    plain = SamplingParams(max_tokens=n, temperature=0.0, stop_token_ids=engine.stops, detokenize=False)

    def llm_generate(prompts: list[str]) -> list[list[int]]:
        token_prompts = [TokensPrompt(prompt_token_ids=list(p.input_ids)) for p in fmt.render_many(prompts)]
        outs = engine.llm.generate(token_prompts, plain, use_tqdm=False)
        return [cut_at_stop(o.outputs[0].token_ids, engine.stops) for o in outs]

    def engine_run(prompts: list[str]) -> list[list[int]]:
        return engine.generate_ids(fmt.render_many(prompts), config)

    def guarded_run(prompts: list[str]) -> None:
        guarded.generate(prompts, config)

    sides = {"llm_generate": llm_generate, "engine": engine_run, "guarded": guarded_run}

    def measure(kind: str, prompts: list[str], one_at_a_time: bool = False) -> float:
        if kind == "guarded":
            engine.install_reads(guard.layers)
        else:
            engine.remove_reads()
        guarded.reset_prefix_cache()
        run = sides[kind]
        if one_at_a_time:
            return statistics.median(timed(lambda p=p: run([p])) for p in prompts)
        return timed(lambda: run(prompts))

    for kind in sides:  # warm-up
        measure(kind, benign[:4])
    engine.install_reads(guard.layers)
    check = guarded.generate(benign, config)
    engine.remove_reads()
    plain_ids, engine_ids = llm_generate(benign), engine_run(benign)
    texts = [model.tokenizer.decode(ids, skip_special_tokens=True) for ids in plain_ids]
    rows: dict[str, dict[str, list[float]]] = {}
    for _ in range(args.rounds):
        for kind in sides:
            for name, prompts, single in (
                ("batch32", benign, False),
                ("single", benign[:8], True),
                ("mixed", mixed, False),
            ):
                rows.setdefault(name, {}).setdefault(kind, []).append(measure(kind, prompts, single))
    engine.install_reads(guard.layers)
    report: dict = {
        "prompts": {"batch32": len(benign), "single": 8, "mixed": len(mixed)},
        "new_tokens": n,
        "rounds": args.rounds,
        "blocked_in_mixed": sum(r.blocked for r in guarded.generate(mixed, max_new_tokens=1)),
        "blocked_in_benign": sum(r.blocked for r in check),
        "harmless_pool_blocked": len(pool) - len(allowed),
        "guarded_replies_equal_llm_generate": f"{sum(r.text == t for r, t in zip(check, texts))}/{len(benign)}",
        "engine_ids_equal_llm_generate": f"{sum(a == b for a, b in zip(engine_ids, plain_ids))}/{len(benign)}",
    }
    for name, times in rows.items():
        med = {kind: statistics.median(t) for kind, t in times.items()}
        base = med["llm_generate"]
        entry: dict = {f"{kind}_s": round(t, 3) for kind, t in med.items()}
        entry |= {f"{kind}_min_s": round(min(t), 3) for kind, t in times.items()}  # least disturbed by a shared CPU
        entry["engine_vs_llm_generate"] = f"{100 * (med['engine'] / base - 1):+.1f}%"
        entry["guarded_vs_engine"] = f"{100 * (med['guarded'] / med['engine'] - 1):+.1f}%"
        entry["guarded_vs_llm_generate"] = f"{100 * (med['guarded'] / base - 1):+.1f}%"
        if name == "batch32":
            tokens = len(benign) * n  # upper bound: the same greedy tokens on every side (stop tokens end some early)
            entry |= {f"{kind}_tok_s": round(tokens / t, 1) for kind, t in med.items()}
        report[name] = entry
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
