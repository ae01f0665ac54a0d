"""The span guard's fit reads, with and without running shared template prefixes once, side by side in one run.

Builds the default span fit's examples (plain prompts with three endings, plus each prompt wrapped in the named
jailbreaks and in GPTFuzzer's fit-half templates) for the first N harmful and N harmless training prompts, reads
every example at its positions both ways (`harmlens.runtime.prefix_reads.read_positions`; min_prefix larger than any
prompt turns sharing off), and prints tokens run, seconds, the speed ratio and the largest difference relative to the
activations' scale.

Run: python benchmarks/span_prefix_reads.py [--model organism] [--n 64] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import time


def main() -> None:
    """Parse the flags, read both ways, print and optionally save the comparison."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="organism", help="organism (default), base, or a model folder / Hub name")
    p.add_argument("--n", type=int, default=64, help="harmful and harmless training prompts each (default 64)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    args = p.parse_args()

    import torch

    from harmlens.guards.fitting import span_fit
    from harmlens.guards.pipeline.subjects import load_subject
    from harmlens.probes.data import builtin_prompts
    from harmlens.runtime.activations import check_layers
    from harmlens.runtime.chat import chat_format
    from harmlens.runtime.prefix_reads import prefix_groups, read_positions

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_subject(args.model)
    harmful = builtin_prompts("harmful", "train", limit=args.n)
    harmless = builtin_prompts("harmless", "train", limit=args.n)
    groups = span_fit._groups(span_fit.default_wrappers(0))
    fmt = chat_format(model)
    examples = span_fit._examples(fmt, model.tokenizer, harmful, harmless, groups, 32, random.Random(0), True)
    prompts = [e[0] for e in examples]
    wanted = [sorted({*e[1], *e[2], e[0].t_inst}) for e in examples]
    layers = check_layers(model, span_fit.span_layers(model))
    runs = {}
    for name, min_prefix in (("whole", 10**9), ("shared prefixes", 32)):
        start = time.perf_counter()
        acts = read_positions(model, prompts, wanted, layers=layers, batch_size=8, min_prefix=min_prefix)
        runs[name] = (acts, time.perf_counter() - start)
    shared_tokens = sum(n + sum(len(prompts[i]) - n for i in idx) for n, idx in prefix_groups(prompts, 32))
    (whole, t_whole), (shared, t_shared) = runs["whole"], runs["shared prefixes"]
    scale = max(float(a.abs().max()) for a in whole)
    diff = max(float((a - b).abs().max()) for a, b in zip(whole, shared)) / scale
    out = {
        "model": args.model,
        "dtype": str(next(model.parameters()).dtype),
        "threads": torch.get_num_threads(),
        "examples": len(prompts),
        "tokens_whole": sum(len(q) for q in prompts),
        "tokens_shared": shared_tokens,
        "seconds_whole": round(t_whole, 1),
        "seconds_shared": round(t_shared, 1),
        "speedup": round(t_whole / t_shared, 2),
        "max_abs_diff_over_scale": diff,
    }
    print(
        f"{out['examples']} span-fit examples on {args.model} ({out['dtype']}, {out['threads']} threads): "
        f"whole {out['tokens_whole']} tokens {out['seconds_whole']} s; shared prefixes {out['tokens_shared']} "
        f"tokens {out['seconds_shared']} s; {out['speedup']}x; largest difference {diff:.2e} of the scale"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
