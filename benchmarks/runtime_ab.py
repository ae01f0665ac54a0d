"""Before/after of the issue-27 ratios: the same measurements through public names that harmlens 0.2 and 0.3 share,
so one script times any two checkouts (run it once per checkout, PYTHONPATH pointing at each, back to back).

Rows (each a median over --repeats rounds that alternate which side runs first, after a warm-up each):
- generation, no hooks: harmlens `generate` vs plain transformers `generate` (SDPA) on the same weights and batches
- generation with one steering hook vs the same plain `generate`
- the same on the static-cache path (GenerationConfig(cache="static"), 0.3 and later; skipped on older checkouts)
- guarded generation (a centroid guard that allows every prompt) vs harmlens `generate`, equal new tokens
- extract_directions vs one plain output_hidden_states forward over the same rendered prompts

Run: PYTHONPATH=CHECKOUT python benchmarks/runtime_ab.py [--threads 2] [--dtype bfloat16] [--prompts 32]
     [--new-tokens 32] [--batch-size 32] [--n-extract 64] [--repeats 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def alternate(a, b, repeats: int) -> tuple[float, float, float]:
    """(median a seconds, median b seconds, median b/a), alternating which side runs first; one warm-up each."""
    a(), b()
    ta, tb, ratios = [], [], []
    for r in range(repeats):
        first, second = (a, b) if r % 2 == 0 else (b, a)
        t0 = time.perf_counter()
        first()
        t1 = time.perf_counter()
        second()
        t2 = time.perf_counter()
        x, y = (t1 - t0, t2 - t1) if r % 2 == 0 else (t2 - t1, t1 - t0)
        ta.append(x), tb.append(y), ratios.append(y / x)
    return statistics.median(ta), statistics.median(tb), statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, default in (("--threads", 2), ("--prompts", 32), ("--new-tokens", 32), ("--batch-size", 32)):
        parser.add_argument(flag, type=int, default=default)
    parser.add_argument("--n-extract", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import harmlens  # noqa: I001
    from harmlens.guards import CentroidConfig, LatentGuard
    from harmlens.probes import builtin_prompts, chat_format, extract_directions, generate, load_model, steer
    from transformers import AutoModelForCausalLM

    model = load_model(dtype=getattr(torch, args.dtype), device="cpu")
    folder = model.harmlens_weights_path
    plain = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, args.dtype), attn_implementation="sdpa")
    plain.eval()
    tok = model.tokenizer
    harmful = builtin_prompts("harmful", "train", limit=max(args.prompts, args.n_extract))
    harmless = builtin_prompts("harmless", "train", limit=args.n_extract)
    instructions = harmful[: args.prompts]
    rendered = chat_format(model).render_many(instructions)
    kw = dict(max_new_tokens=args.new_tokens, batch_size=args.batch_size, progress=False)
    stops = [tok.eos_token_id]
    stops += [i for i in tok.convert_tokens_to_ids(["<|im_end|>"]) if isinstance(i, int) and i not in stops]
    pid = tok.pad_token_id

    def plain_generate() -> list[str]:
        order = sorted(range(len(rendered)), key=lambda i: len(rendered[i]))
        out: dict[int, str] = {}
        for s in range(0, len(order), args.batch_size):
            idx = order[s : s + args.batch_size]
            width = max(len(rendered[i]) for i in idx)
            ids = torch.full((len(idx), width), pid)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                n = len(rendered[i])
                ids[row, width - n :], mask[row, width - n :] = torch.tensor(rendered[i].input_ids), 1
            with torch.no_grad():
                seqs = plain.generate(
                    input_ids=ids, attention_mask=mask, max_new_tokens=args.new_tokens, do_sample=False,
                    eos_token_id=stops, pad_token_id=pid, temperature=None, top_p=None, top_k=None,
                )  # fmt: skip
            for row, i in enumerate(idx):
                out[i] = tok.decode(seqs[row, width:], skip_special_tokens=True)
        return [out[i] for i in range(len(rendered))]

    vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))

    def steered() -> list[str]:
        with steer(model, vector, model.cfg.n_layers // 2):
            return generate(model, instructions, **kw)

    def steered_static() -> list[str]:
        with steer(model, vector, model.cfg.n_layers // 2):
            return generate(model, instructions, cache="static", **kw)

    result: dict = {"harmlens": getattr(harmlens, "__file__", "?"), "dtype": args.dtype, "threads": args.threads}
    same = plain_generate() == generate(model, instructions, **kw)
    rows = [("no_hooks", lambda: generate(model, instructions, **kw)), ("one_steering_hook", steered)]
    if (Path(harmlens.__file__).parent / "runtime").is_dir():  # GenerationConfig(cache=...) exists from 0.3
        rows.append(("static_cache_steering_hook", steered_static))
    for name, fn in rows:
        t_plain, t_hl, ratio = alternate(plain_generate, fn, args.repeats)
        result[name] = {"plain_s": round(t_plain, 2), "harmlens_s": round(t_hl, 2), "ratio": round(1 / ratio, 3)}
        print(name, result[name], flush=True)
    result["no_hooks"]["same_replies_as_plain"] = same

    guard = LatentGuard.fit(model, harmful[:32], harmless[:32], CentroidConfig())  # the overhead of a t_inst read
    guard.alpha = 1e9  # allows every prompt: the read and the scoring are pure overhead
    guarded = guard.wrap(model)
    t_un, t_g, ratio = alternate(
        lambda: generate(model, instructions, **kw), lambda: guarded.generate(instructions, **kw), args.repeats
    )
    result["guarded"] = {"unguarded_s": round(t_un, 2), "guarded_s": round(t_g, 2), "ratio": round(ratio, 3)}
    print("guarded", result["guarded"], flush=True)

    both = chat_format(model).render_many(harmful[: args.n_extract] + harmless)

    def plain_forward() -> None:
        for s in range(0, len(both), args.batch_size):
            chunk = both[s : s + args.batch_size]
            width = max(len(p) for p in chunk)
            ids = torch.full((len(chunk), width), pid)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, p in enumerate(chunk):
                ids[row, : len(p)], mask[row, : len(p)] = torch.tensor(p.input_ids), 1
            with torch.no_grad():
                plain(input_ids=ids, attention_mask=mask, output_hidden_states=True)

    def extract() -> None:
        extract_directions(model, harmful[: args.n_extract], harmless, batch_size=args.batch_size, progress=False)

    t_plain, t_hl, ratio = alternate(plain_forward, extract, args.repeats)
    result["extraction"] = {"plain_s": round(t_plain, 2), "harmlens_s": round(t_hl, 2), "ratio": round(1 / ratio, 3)}
    print("extraction", result["extraction"], flush=True)
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
