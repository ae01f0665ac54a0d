"""Issue-6 performance ratios, measured side by side with interleaved repeats on the same prompts.

1. guarded generation (GuardedModel, verdict read from the generation's own prefill) vs plain generation of the
   same prompts, with the guard never firing (pure overhead)                                   target <= 1.05x
2. standalone guard (render + forward up to the last layer read + scoring) vs a full forward (all blocks and the
   unembedding) of the same prompts                                   target <= (last layer read + 1) / n_layers

Run: python benchmarks/guard_perf.py [--model PATH] [--guard guard.safetensors] [--gen-prompts 16] [--new-tokens 32]
     [--n 32] [--repeats 5]. Without --guard, guards are fitted on 16 + 16 built-in prompts at a few layer choices,
     and a span guard (read='span': every token up to t_inst, default layers).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(a, b, repeats: int) -> tuple[float, float, float]:
    """(median a, median b, median of per-repeat b/a ratios), alternating which runs first; one warm-up each."""
    a(), b()
    ta, tb, ratios = [], [], []
    for r in range(repeats):
        x, y = (_timed(a), _timed(b)) if r % 2 == 0 else tuple(reversed((_timed(b), _timed(a))))
        ta.append(x), tb.append(y), ratios.append(y / x)
    return statistics.median(ta), statistics.median(tb), statistics.median(ratios)


def bench_generation(model, guard, prompts: list[str], new_tokens: int, batch_size: int, repeats: int) -> dict:
    """Guarded (never blocking) vs plain generation of the same prompts."""
    from harmlens.runtime import generate

    saved, guard.alpha = guard.alpha, 1e9  # never fires: pure overhead
    guarded = guard.wrap(model)
    try:
        same = generate(model, prompts, max_new_tokens=new_tokens, batch_size=batch_size, progress=False) == [
            r.text for r in guarded.generate(prompts, max_new_tokens=new_tokens, batch_size=batch_size, progress=False)
        ]
        plain_s, guarded_s, ratio = interleaved(
            lambda: generate(model, prompts, max_new_tokens=new_tokens, batch_size=batch_size, progress=False),
            lambda: guarded.generate(prompts, max_new_tokens=new_tokens, batch_size=batch_size, progress=False),
            repeats,
        )
    finally:
        guard.alpha = saved
    return {
        "prompts": len(prompts),
        "new_tokens": new_tokens,
        "guard_layers": guard.layers,
        "plain_s": plain_s,
        "guarded_s": guarded_s,
        "ratio": ratio,
        "target": 1.05,
        "same_replies": same,
        "ok": ratio <= 1.05,
    }


def bench_standalone(model, guard, prompts: list[str], batch_size: int, repeats: int) -> dict:
    """guard(prompts) vs a full bridge forward over the same padded batches."""
    from harmlens.runtime.activations import pad_batch
    from harmlens.runtime.chat import chat_format

    rendered = chat_format(model).render_many(prompts)
    rendered.sort(key=len)
    pid = model.tokenizer.pad_token_id
    batches = [pad_batch(rendered[i : i + batch_size], pid) for i in range(0, len(rendered), batch_size)]

    def full():
        with torch.no_grad():
            for b in batches:
                model(b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids)

    guard.batch_size = batch_size
    full_s, guard_s, ratio = interleaved(full, lambda: guard(prompts), repeats)
    last, n = max(guard.layers), int(model.cfg.n_layers)
    bound = (last + 1) / n
    return {
        "prompts": len(prompts),
        "layers": guard.layers,
        "last_layer_read": last,
        "full_forward_s": full_s,
        "guard_s": guard_s,
        "ratio": ratio,
        "target": bound,
        "ok": ratio <= bound,
    }


def main(argv: list[str] | None = None) -> int:
    """Run both benchmarks and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--guard", type=Path, default=None, help="a fitted guard file (else small guards are fitted)")
    parser.add_argument("--gen-prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--n", type=int, default=32, help="prompts for the standalone benchmark")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from harmlens.guards import CentroidConfig, LatentGuard, SpanMLPConfig
    from harmlens.probes.data import builtin_prompts
    from harmlens.runtime.loading import load_model

    model = load_model(args.model)
    harmless = builtin_prompts("harmless", "val")
    if args.guard is not None:
        guards = {"file": LatentGuard.load(args.guard, model)}
    else:
        fit_h, fit_l = builtin_prompts("harmful", "train", limit=16), builtin_prompts("harmless", "train", limit=16)
        n = int(model.cfg.n_layers)
        choices = {"early": range(2, n // 3 + 1), "middle": range(n // 3, 2 * n // 3), "all": range(n + 1)}
        guards = {
            name: LatentGuard.fit(model, fit_h, fit_l, CentroidConfig(layers=tuple(layers)))
            for name, layers in choices.items()
        }
        guards["span"] = LatentGuard.fit(model, fit_h, fit_l, SpanMLPConfig(wrappers=["aim"]))
    result = {
        "model": str(getattr(model, "harmlens_name", "?")),
        "threads": torch.get_num_threads(),
        "generation": {},
        "standalone": {},
    }
    for name, guard in guards.items():
        result["generation"][name] = bench_generation(
            model, guard, harmless[: args.gen_prompts], args.new_tokens, args.batch_size, args.repeats
        )
        result["standalone"][name] = bench_standalone(model, guard, harmless[: args.n], args.batch_size, args.repeats)
        print(json.dumps({name: {k: result[k][name] for k in ("generation", "standalone")}}), flush=True)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
