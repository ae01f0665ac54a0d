"""Issue-18 performance ratios, measured side by side in one run on the same prompts and weights.

1. hf-backend generation (no hooks; one steering hook) vs plain HF generate with SDPA, tokens/s   target >= 0.95x / 0.9x
   (32 prompts x 32 new tokens, batch 16; min_new_tokens = max_new_tokens so both sides make the same tokens)
2. extract_directions vs one plain HF forward with output_hidden_states=True (SDPA), same prompts   target >= 1.0x
3. evaluate_asr with backend='vllm' vs 'hf' on the same prompts and dtype (when vllm is installed), tokens/s and
   how often their judgments agree

Run: python benchmarks/engines_perf.py [--threads 2] [--dtype float32] [--no-vllm] [--only extraction]
(the vLLM part needs the `vllm` extra: pip install -e ".[vllm]")
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time

import torch


def best_of(fn, repeats: int = 2) -> float:
    """Fastest of a few runs after one warm-up (damps noise from other processes)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def best_alternating(fns, repeats: int = 2) -> list[float]:
    """Fastest time of each function, run in turn after one warm-up each: load from other processes that drifts
    during the run hits every side alike, instead of whichever side happened to run under it."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def plain_hf(model, attn: str = "sdpa"):
    """The same weights as a plain transformers model (no bridge), with the given attention kernel."""
    from transformers import AutoModelForCausalLM

    from harmlens.runtime.loading import embedded_model_dir

    hf = model.original_model
    dtype, device = next(hf.parameters()).dtype, next(hf.parameters()).device
    plain = AutoModelForCausalLM.from_pretrained(str(embedded_model_dir()), dtype=dtype, attn_implementation=attn)
    return plain.to(device).eval()


def generation_ratios(model, prompts, *, new_tokens: int, batch_size: int, repeats: int) -> dict:
    """tokens/s of harmlens generate_ids (no hook, one steering hook) and plain HF generate over the same batches."""
    from harmlens.probes.interventions import steer
    from harmlens.runtime import GenerationConfig, hf_generate_ids, left_pad, pad_id, stop_token_ids, token_ids
    from harmlens.runtime.batching import sorted_batches

    plain = plain_hf(model)
    pid, stops = pad_id(model.tokenizer), stop_token_ids(model)
    config = GenerationConfig(max_new_tokens=new_tokens, batch_size=batch_size, progress=False)
    seqs = token_ids(prompts)

    def run_engine():  # harmlens's HF engine at exactly new_tokens per prompt (min_new_tokens, as plain below)
        encode = lambda idx: left_pad([seqs[i] for i in idx], pid)  # noqa: E731
        hf_generate_ids(model, [len(s) for s in seqs], encode, config, stops=stops, pad=pid, min_new_tokens=new_tokens)

    device = next(plain.parameters()).device

    def run_plain():
        with torch.no_grad():
            for _, idx in sorted_batches([len(p) for p in prompts], batch_size):
                enc = {k: v.to(device) for k, v in left_pad([prompts[i].input_ids for i in idx], pid).items()}
                plain.generate(
                    **enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, eos_token_id=stops,
                    pad_token_id=pid, temperature=None, top_p=None, top_k=None,
                )  # fmt: skip

    def run_harmlens():
        run_engine()

    vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))

    def run_steered():
        with steer(model, vector, model.cfg.n_layers // 2):
            run_engine()

    n_tokens = len(prompts) * new_tokens
    t_plain = best_of(run_plain, repeats)
    t_hl = best_of(run_harmlens, repeats)
    t_steer = best_of(run_steered, repeats)
    return {
        "plain_hf_sdpa_tok_s": round(n_tokens / t_plain, 1),
        "harmlens_tok_s": round(n_tokens / t_hl, 1),
        "harmlens_steered_tok_s": round(n_tokens / t_steer, 1),
        "ratio_no_hooks": round(t_plain / t_hl, 3),
        "ratio_steered": round(t_plain / t_steer, 3),
    }


def extraction_ratio(model, harmful, harmless, *, batch_size: int, repeats: int) -> dict:
    """extract_directions vs one plain HF forward (output_hidden_states=True, SDPA) over the same rendered prompts in
    the same batches (each class batched on its own, right-padded, as extract_directions does)."""
    from harmlens.probes.directions import extract_directions
    from harmlens.runtime import pad_id
    from harmlens.runtime.activations import pad_batch
    from harmlens.runtime.chat import chat_format

    plain = plain_hf(model)
    device = next(plain.parameters()).device
    fmt = chat_format(model)
    classes = [fmt.render_many(harmful), fmt.render_many(harmless)]
    pid = pad_id(model.tokenizer)

    def run_plain():
        with torch.no_grad():
            for rendered in classes:
                for s in range(0, len(rendered), batch_size):
                    b = pad_batch(rendered[s : s + batch_size], pid, device=device)
                    plain(input_ids=b.input_ids, attention_mask=b.attention_mask, output_hidden_states=True)

    def run_harmlens():
        extract_directions(model, harmful, harmless, batch_size=batch_size, progress=False)

    t_plain, t_hl = best_alternating([run_plain, run_harmlens], repeats)
    return {
        "plain_forward_s": round(t_plain, 2),
        "extract_directions_s": round(t_hl, 2),
        "ratio": round(t_plain / t_hl, 3),
    }


def vllm_asr_ratio(model, instructions, *, new_tokens: int, batch_size: int) -> dict:
    """evaluate_asr on both backends (the vLLM engine started beforehand), tokens/s and judgment agreement."""
    from harmlens.attacks.evaluate import evaluate_asr
    from harmlens.runtime import get_backend

    start = time.perf_counter()
    get_backend(model, "vllm", max_model_len=1024)
    engine_start = time.perf_counter() - start
    kw = dict(settings=["none", "swap"], max_new_tokens=new_tokens, batch_size=batch_size, progress=False)
    out = {"engine_start_s": round(engine_start, 1)}
    reports = {}
    for backend in ("vllm", "hf"):
        start = time.perf_counter()
        reports[backend] = evaluate_asr(model, instructions, backend=backend, **kw)
        seconds = time.perf_counter() - start
        tokens = sum(
            len(model.tokenizer(r["reply"] or "", add_special_tokens=False)["input_ids"])
            for r in reports[backend].records
        )
        out[f"{backend}_s"], out[f"{backend}_tok_s"] = round(seconds, 2), round(tokens / seconds, 1)
        out[f"{backend}_asr"] = {k: round(v.asr, 4) for k, v in reports[backend].asr.items()}
    pairs = list(zip(reports["vllm"].records, reports["hf"].records))
    out["judgment_agreement"] = f"{sum(a['success'] == b['success'] for a, b in pairs)}/{len(pairs)}"
    out["reply_identical"] = f"{sum(a['reply'] == b['reply'] for a, b in pairs)}/{len(pairs)}"
    out["speedup"] = round(out["hf_s"] / out["vllm_s"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--gen-prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--n-extract", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-vllm", action="store_true")
    parser.add_argument("--only", choices=("generation", "extraction", "vllm"), help="run one part only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from harmlens.probes.data import builtin_prompts
    from harmlens.runtime.chat import chat_format
    from harmlens.runtime.loading import load_model

    model = load_model(device="cpu", dtype=getattr(torch, args.dtype))
    harmful = builtin_prompts("harmful", "train", limit=max(args.n_extract, args.gen_prompts))
    harmless = builtin_prompts("harmless", "train", limit=args.n_extract)
    prompts = chat_format(model).render_many(harmful[: args.gen_prompts])
    result: dict = {
        "threads": args.threads,
        "dtype": args.dtype,
        "fast_attention_layers": model.harmlens_fast_attention,
    }
    if args.only in (None, "generation"):
        result["generation"] = generation_ratios(
            model, prompts, new_tokens=args.new_tokens, batch_size=args.batch_size, repeats=args.repeats
        )
        print(json.dumps(result, indent=2), flush=True)
    if args.only in (None, "extraction"):
        result["extraction"] = extraction_ratio(
            model, harmful[: args.n_extract], harmless, batch_size=args.batch_size, repeats=args.repeats
        )
        print(json.dumps(result["extraction"], indent=2), flush=True)
    vllm = args.only in (None, "vllm") and not args.no_vllm
    if vllm and importlib.util.find_spec("vllm") is not None:
        result["vllm_asr"] = vllm_asr_ratio(
            model, harmful[: args.gen_prompts], new_tokens=args.new_tokens, batch_size=args.batch_size
        )
    elif vllm:
        result["vllm_asr"] = "vllm not installed"
    print(json.dumps(result, indent=2))


if __name__ == "__main__":  # vLLM spawns its engine process: this guard is required
    main()
