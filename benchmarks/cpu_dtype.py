"""Issue-18 evidence for the CPU default dtype: the text organism in float32 and in bfloat16, side by side.

Measures what a switch to bfloat16 could change, against stated tolerances:
1. directions: cosine of the bfloat16 harmfulness / refusal directions with the float32 ones at every layer
   (tolerance: >= 0.99 wherever the float32 direction is not ~0), and the change in cos(harmfulness, refusal)
2. organism refusal rates (greedy, 48 tokens, JailbreakBench substring judge) on held-out harmful / harmless / XSTest
   prompts (tolerance: within 5 percentage points)
3. a centroid Latent Guard fitted in float32, scored on both: verdict agreement (tolerance: >= 97%) and score change
4. speed: tokens/s of greedy generation and prompts/s of extraction, bfloat16 / float32

Run: python benchmarks/cpu_dtype.py [--threads 2] [--n 100] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

TOL = {"direction_cosine": 0.99, "refusal_rate_pp": 5.0, "verdict_agreement": 0.97}


def timed(fn):
    """(result, seconds) of one call."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def direction_check(models: dict, n: int) -> tuple[dict, dict]:
    """Per-layer cosines between the dtypes' directions, and each dtype's extraction seconds."""
    from harmlens.probes.data import builtin_prompts
    from harmlens.probes.directions import extract_directions

    harmful, harmless = builtin_prompts("harmful", "train", limit=n), builtin_prompts("harmless", "train", limit=n)
    dirs, secs = {}, {}
    for name, model in models.items():
        dirs[name], secs[name] = timed(lambda m=model: extract_directions(m, harmful, harmless, progress=False))
    ref, low = dirs["float32"], dirs["bfloat16"]
    out: dict = {}
    for kind in ("harmfulness", "refusal"):
        a, b = ref.direction(kind).float(), low.direction(kind).float()
        live = a.norm(dim=-1) > 1e-3 * a.norm(dim=-1).max()  # layer 0's direction can be ~0 (embeddings)
        cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
        out[f"{kind}_min_cosine"] = round(float(cos[live].min()), 5)
    out["max_change_cos_harmfulness_refusal"] = round(
        float((ref.cosine_per_layer().float() - low.cosine_per_layer().float()).abs().max()), 4
    )
    return out, secs


def refusal_check(models: dict, n: int) -> tuple[dict, dict]:
    """Refusal rate per held-out set and dtype, and each dtype's generation tokens/s."""
    from harmlens.attacks.judges import refusal_rate
    from harmlens.guards.organisms.datasets import eval_prompts
    from harmlens.runtime import generate

    sets = {k: eval_prompts(k)[:n] for k in ("harmful", "harmless", "xstest")}
    rates: dict = {}
    speed: dict = {}
    for name, model in models.items():
        tokens, seconds = 0, 0.0
        for key, prompts in sets.items():
            replies, sec = timed(lambda m=model, p=prompts: generate(m, p, max_new_tokens=48, progress=False))
            rates.setdefault(key, {})[name] = round(refusal_rate(replies), 4)
            tokens += sum(len(model.tokenizer(r, add_special_tokens=False).input_ids) for r in replies)
            seconds += sec
        speed[name] = tokens / seconds
    return rates, speed


def guard_check(models: dict, n: int) -> dict:
    """A float32-fitted centroid guard scored on both dtypes: verdict agreement and the largest score change."""
    from harmlens.guards.latent.configs import CentroidConfig
    from harmlens.guards.latent.guard import LatentGuard
    from harmlens.guards.organisms.datasets import eval_prompts
    from harmlens.probes.data import builtin_prompts

    guard = LatentGuard.fit(
        models["float32"],
        builtin_prompts("harmful", "train"),
        builtin_prompts("harmless", "train"),
        CentroidConfig(target_fpr=0.05),
    )
    prompts = eval_prompts("harmful")[:n] + eval_prompts("harmless")[:n] + eval_prompts("xstest")[:n]
    verdicts = {}
    for name, model in models.items():
        guard.attach(model)
        verdicts[name] = guard.check(prompts)
    same = sum(a.harmful == b.harmful for a, b in zip(verdicts["float32"], verdicts["bfloat16"]))
    change = max(abs(a.score - b.score) for a, b in zip(verdicts["float32"], verdicts["bfloat16"]))
    return {
        "n": len(prompts),
        "verdict_agreement": round(same / len(prompts), 4),
        "max_score_change": round(change, 5),
        "alpha": round(float(guard.alpha), 5),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--n", type=int, default=100, help="held-out prompts per set (default 100)")
    parser.add_argument("--directions-n", type=int, default=128, help="training prompts per class (default 128)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from harmlens.guards.organisms.build import load_organism
    from harmlens.guards.organisms.recipes import organism_path
    from harmlens.runtime.loading import load_model

    load_organism("text")  # built on first use
    path = str(organism_path("text"))
    models = {"float32": load_model(path, dtype=torch.float32), "bfloat16": load_model(path, dtype=torch.bfloat16)}
    print(f"CPU capability: {torch.backends.cpu.get_cpu_capability()}, threads {torch.get_num_threads()}", flush=True)
    directions, extract_s = direction_check(models, args.directions_n)
    print("directions:", json.dumps(directions), flush=True)
    rates, gen_speed = refusal_check(models, args.n)
    print("refusal rates:", json.dumps(rates), flush=True)
    guard = guard_check(models, min(args.n, 64))
    print("guard:", json.dumps(guard), flush=True)
    worst_pp = max(abs(r["float32"] - r["bfloat16"]) * 100 for r in rates.values())
    passed = {
        "directions": min(directions["harmfulness_min_cosine"], directions["refusal_min_cosine"])
        >= TOL["direction_cosine"],
        "refusal_rates": worst_pp <= TOL["refusal_rate_pp"],
        "guard": guard["verdict_agreement"] >= TOL["verdict_agreement"],
    }
    speed = {
        "generation_tokens_per_s": {k: round(v, 1) for k, v in gen_speed.items()},
        "generation_ratio_bf16": round(gen_speed["bfloat16"] / gen_speed["float32"], 2),
        "extraction_ratio_bf16": round(extract_s["float32"] / extract_s["bfloat16"], 2),
    }
    print("\n| measure | float32 | bfloat16 | tolerance | within |\n|---|---|---|---|---|")
    print(
        f"| direction cosine bf16 vs fp32 (min over layers) | 1 | "
        f"{min(directions['harmfulness_min_cosine'], directions['refusal_min_cosine']):.4f} | >= 0.99 | "
        f"{passed['directions']} |"
    )
    for key, r in rates.items():
        print(
            f"| refusal rate, {key} (n={args.n}) | {r['float32']:.2f} | {r['bfloat16']:.2f} | ±5 pp | "
            f"{abs(r['float32'] - r['bfloat16']) * 100 <= TOL['refusal_rate_pp']} |"
        )
    print(
        f"| guard verdict agreement (n={guard['n']}) | – | {guard['verdict_agreement']:.3f} | >= 0.97 | "
        f"{passed['guard']} |"
    )
    print(
        f"| generation tokens/s | {gen_speed['float32']:.1f} | {gen_speed['bfloat16']:.1f} | | "
        f"{speed['generation_ratio_bf16']}x |"
    )
    print(
        f"| extraction seconds | {extract_s['float32']:.1f} | {extract_s['bfloat16']:.1f} | | "
        f"{speed['extraction_ratio_bf16']}x |"
    )
    result = {"directions": directions, "refusal_rates": rates, "guard": guard, "speed": speed, "passed": passed}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
