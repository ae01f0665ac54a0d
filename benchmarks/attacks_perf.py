"""Issue-5 performance: evaluate_asr vs plain batched generation of the same perturbed prompts, tokens/s (target >= 0.8x).

Both sides generate greedily for the same ChatPrompts (every setting × jailbreak, so lengths differ widely) with the
same batch size; evaluate_asr also renders, judges, and streams every record to a fresh results.jsonl (fsync'd).
Tokens are counted by re-tokenizing the replies. Each side runs `--repeats` times, alternating; the fastest counts.

Run: python benchmarks/attacks_perf.py [--model PATH] [--n 16] [--batch-size 8] [--new-tokens 32] [--jailbreaks aim]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, whatever the install state


def main() -> None:
    """Measure and print a JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--jailbreaks", default="aim")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import torch

    from harmlens.attacks import evaluate_asr
    from harmlens.attacks.evaluate import build_prompts
    from harmlens.attacks.jailbreaks import resolve_jailbreaks
    from harmlens.attacks.settings import TEXT_SETTINGS
    from harmlens.probes.data import builtin_prompts
    from harmlens.runtime import generate, role_template
    from harmlens.runtime.loading import load_model

    model = load_model(args.model, device="cpu" if not torch.cuda.is_available() else None)
    tok = model.tokenizer
    instructions = builtin_prompts("harmful", "val", limit=args.n)
    jbs = [j for j in args.jailbreaks.split(",") if j]
    prompts = list(
        build_prompts(role_template(model), instructions, list(TEXT_SETTINGS), resolve_jailbreaks(jbs)).values()
    )
    kw = dict(max_new_tokens=args.new_tokens, batch_size=args.batch_size, progress=False)

    def n_tokens(replies):
        return sum(len(tok(r, add_special_tokens=False)["input_ids"]) for r in replies)

    def plain():
        return generate(model, prompts, **kw)

    def attack():
        with tempfile.TemporaryDirectory() as tmp:
            report = evaluate_asr(model, instructions, jailbreaks=jbs, out=tmp, **kw)
        return [r["reply"] for r in report.records]

    generate(model, prompts[: args.batch_size], max_new_tokens=4, batch_size=args.batch_size, progress=False)  # warm-up
    best = {"plain": float("inf"), "evaluate_asr": float("inf")}
    tokens = {}
    for _ in range(args.repeats):
        for name, fn in (("plain", plain), ("evaluate_asr", attack)):
            start = time.perf_counter()
            replies = fn()
            best[name] = min(best[name], time.perf_counter() - start)
            tokens[name] = n_tokens(replies)
    rate = {k: tokens[k] / best[k] for k in best}
    lengths = [len(p) for p in prompts]
    print(
        json.dumps(
            {
                "model": getattr(model, "harmlens_name", None),
                "device": str(next(model.parameters()).device),
                "prompts": len(prompts),
                "prompt_tokens_min_max": [min(lengths), max(lengths)],
                "batch_size": args.batch_size,
                "max_new_tokens": args.new_tokens,
                "seconds": best,
                "new_tokens": tokens,
                "tokens_per_s": rate,
                "ratio": rate["evaluate_asr"] / rate["plain"],
                "target": 0.8,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
