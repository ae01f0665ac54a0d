"""Issue-27 runtime ratios against plain transformers on the same weights, prompts and batches, in one process.

1. generation, no hooks: harmlens generate_ids vs plain `generate` (SDPA), tokens/s                 target >= 0.95x
2. generation with one steering hook vs the same plain `generate`                                    target >= 0.90x
3. generation on the static-cache path (GenerationConfig(cache='static')) with the steering hook vs plain eager
4. guarded generation (guard never firing) vs harmlens generation at equal new tokens                target <= 1.05x
5. extract_directions vs one plain hidden-states forward over the same prompts                      target >= 1.00x

Each pair alternates which side runs first over --repeats rounds after a warm-up and reports the median ratio, so a
busy machine slows both sides alike. Run: python benchmarks/runtime_perf.py [--threads 2] [--dtype bfloat16]
[--prompts 32] [--new-tokens 32] [--batch-size 32] [--n-extract 64] [--repeats 3] [--model NAME_OR_FOLDER] [--out F]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def plain_model(folder: str, model):
    """The same weights as a plain transformers model with SDPA attention, on the harmlens model's device and dtype."""
    from transformers import AutoModelForCausalLM

    first = next(model.original_model.parameters())
    plain = AutoModelForCausalLM.from_pretrained(folder, dtype=first.dtype, attn_implementation="sdpa")
    return plain.to(first.device).eval()


def generation_table(model, plain, prompts, *, new_tokens: int, batch_size: int, repeats: int) -> dict:
    """Rows 1-4: tokens/s of each harmlens path and its median ratio to the plain side, alternating."""
    from guard_perf import interleaved

    from harmlens.guards import LatentGuard
    from harmlens.probes import builtin_prompts, steer
    from harmlens.runtime import GenerationConfig, generate_ids, left_pad, pad_id, sorted_batches, stop_token_ids

    pid, stops = pad_id(model.tokenizer), stop_token_ids(model)
    device = next(plain.parameters()).device
    fixed = dict(min_new_tokens=new_tokens)  # both sides make every token (no early stop)
    config = GenerationConfig(max_new_tokens=new_tokens, batch_size=batch_size, progress=False)

    def run_plain():
        with torch.no_grad():
            for _, idx in sorted_batches([len(p) for p in prompts], batch_size):
                enc = {k: v.to(device) for k, v in left_pad([prompts[i].input_ids for i in idx], pid).items()}
                plain.generate(
                    **enc, max_new_tokens=new_tokens, do_sample=False, eos_token_id=stops, pad_token_id=pid,
                    temperature=None, top_p=None, top_k=None, **fixed,
                )  # fmt: skip

    from harmlens.runtime import HFBackend, hf_generate_ids

    seqs = [list(p.input_ids) for p in prompts]

    def run_harmlens(cfg=config, read=None):
        encode = lambda idx: left_pad([seqs[i] for i in idx], pid)  # noqa: E731
        return hf_generate_ids(model, [len(s) for s in seqs], encode, cfg, stops=stops, pad=pid, read=read, **fixed)

    vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    layer = model.cfg.n_layers // 2

    def run_steered(cfg=config):
        with steer(model, vector, layer):
            run_harmlens(cfg)

    n_tokens = len(prompts) * new_tokens
    out: dict = {"prompts": len(prompts), "new_tokens": new_tokens, "batch_size": batch_size}
    rows = {
        "no_hooks": run_harmlens,
        "one_steering_hook": run_steered,
        "static_cache_steering_hook": lambda: run_steered(config.replace(cache="static")),
    }
    for name, fn in rows.items():
        t_plain, t_hl, ratio = interleaved(run_plain, fn, repeats)
        out[name] = {
            "plain_tok_s": round(n_tokens / t_plain, 1),
            "harmlens_tok_s": round(n_tokens / t_hl, 1),
            "ratio": round(1 / ratio, 3),  # plain time / harmlens time: > 1 is faster than plain
        }
    harmful, harmless = builtin_prompts("harmful", "train", limit=32), builtin_prompts("harmless", "train", limit=32)
    guard = LatentGuard.fit(model, harmful, harmless)
    guard.alpha = 1e9  # allows every prompt: the read and the scoring are pure overhead
    guarded = guard.wrap(model)
    same = [model.tokenizer.decode(x, skip_special_tokens=True) for x in generate_ids(model, prompts, config)] == [
        r.text for r in guarded.generate(prompts, config)
    ]
    t_un, t_guarded, ratio = interleaved(
        lambda: HFBackend(model).generate_ids(prompts, config), lambda: guarded.generate(prompts, config), repeats
    )
    out["guarded_vs_unguarded"] = {"unguarded_s": round(t_un, 2), "guarded_s": round(t_guarded, 2)}
    out["guarded_vs_unguarded"].update({"ratio": round(ratio, 3), "same_replies": same})
    return out


def extraction_row(model, plain, harmful, harmless, *, batch_size: int, repeats: int) -> dict:
    """Row 5: extract_directions vs one plain output_hidden_states forward over the same rendered prompts."""
    from guard_perf import interleaved

    from harmlens.probes import extract_directions
    from harmlens.runtime import chat_format, pad_batch, pad_id

    device = next(plain.parameters()).device
    rendered = chat_format(model).render_many(harmful + harmless)
    pid = pad_id(model.tokenizer)

    def run_plain():
        with torch.no_grad():
            for s in range(0, len(rendered), batch_size):
                b = pad_batch(rendered[s : s + batch_size], pid, device=device)
                plain(input_ids=b.input_ids, attention_mask=b.attention_mask, output_hidden_states=True)

    def run_harmlens():
        extract_directions(model, harmful, harmless, batch_size=batch_size, progress=False)

    t_plain, t_hl, ratio = interleaved(run_plain, run_harmlens, repeats)
    return {"plain_forward_s": round(t_plain, 3), "extract_directions_s": round(t_hl, 3), "ratio": round(1 / ratio, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Hub name or HF folder (default: the embedded SmolLM2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument("--device", default=None)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n-extract", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from harmlens.probes import builtin_prompts, load_model
    from harmlens.runtime import chat_format, resolve_model_path

    folder = resolve_model_path(args.model)[0]
    model = load_model(folder, device=args.device, dtype=getattr(torch, args.dtype))
    plain = plain_model(folder, model)
    harmful = builtin_prompts("harmful", "train", limit=max(args.n_extract, args.prompts))
    harmless = builtin_prompts("harmless", "train", limit=args.n_extract)
    prompts = chat_format(model).render_many(harmful[: args.prompts])
    result: dict = {"model": folder, "dtype": args.dtype, "threads": args.threads, "device": str(plain.device)}
    result["generation"] = generation_table(
        model, plain, prompts, new_tokens=args.new_tokens, batch_size=args.batch_size, repeats=args.repeats
    )
    print(json.dumps(result, indent=2), flush=True)
    result["extraction"] = extraction_row(
        model, plain, harmful[: args.n_extract], harmless, batch_size=args.batch_size, repeats=args.repeats
    )
    print(json.dumps(result["extraction"], indent=2), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
