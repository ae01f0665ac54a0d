"""Issue-3 performance ratios, measured side by side in one run on the same prompts.

1. extraction throughput (extract_directions) vs a bare batched forward pass        target >= 0.9x
2. peak memory of extraction vs a full run_with_cache on the same batch               target <= 2%
3. hooked generation (steer, ablate) vs plain generation, tokens/s                   target >= 0.8x

Run: python benchmarks/probes_perf.py [--n 64] [--batch-size 16] [--gen-prompts 16] [--new-tokens 32]
Peak memory is the rise of the process's peak RSS (VmHWM, reset through /proc/self/clear_refs) over its RSS
before the call, each mode in a fresh subprocess (Linux only), so allocator caching cannot hide either side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch


def _prompts(n: int) -> tuple[list[str], list[str]]:
    from harmlens.probes.data import builtin_prompts

    return builtin_prompts("harmful", "train", limit=n), builtin_prompts("harmless", "train", limit=n)


def _best_of(fn, repeats: int = 3) -> float:
    """Fastest of a few runs (after one warm-up), to damp noise from other processes."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_extraction(model, n: int, batch_size: int) -> dict:
    """Prompts/s of extract_directions vs a bare model forward over the same padded batches."""
    from harmlens.probes.directions import extract_directions
    from harmlens.runtime.activations import pad_batch
    from harmlens.runtime.chat import chat_format

    harmful, harmless = _prompts(n)
    fmt = chat_format(model)
    rendered = fmt.render_many(harmful + harmless)
    pad = model.tokenizer.pad_token_id
    batches = [pad_batch(rendered[i : i + batch_size], pad) for i in range(0, len(rendered), batch_size)]

    def bare():
        with torch.no_grad():
            for b in batches:
                model(b.input_ids, attention_mask=b.attention_mask)

    def extract():
        extract_directions(model, harmful, harmless, batch_size=batch_size, progress=False)

    t_bare, t_extract = _best_of(bare), _best_of(extract)
    return {
        "prompts": len(rendered),
        "bare_forward_s": t_bare,
        "extract_s": t_extract,
        "throughput_ratio": t_bare / t_extract,
    }


_MEM_CHILD = r"""
import ctypes, json, sys, torch
from harmlens.probes import load_model
from harmlens.runtime.activations import pad_batch
from harmlens.runtime.chat import chat_format
from harmlens.probes.data import builtin_prompts
from harmlens.probes.directions import extract_directions
mode, n = sys.argv[1], int(sys.argv[2])
model = load_model(device="cpu")
harmful, harmless = builtin_prompts("harmful", "train", limit=n), builtin_prompts("harmless", "train", limit=n)
batch = pad_batch(chat_format(model).render_many(harmful + harmless), model.tokenizer.pad_token_id)
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
with torch.no_grad():  # warm-up: one-off allocations (thread pools, rotary tables) are charged to neither mode
    model(batch.input_ids, attention_mask=batch.attention_mask)
ctypes.CDLL("libc.so.6").malloc_trim(0)
open("/proc/self/clear_refs", "w").write("5")
before = status("VmRSS:")
with torch.no_grad():
    if mode == "cache":
        _, cache = model.run_with_cache(batch.input_ids, attention_mask=batch.attention_mask)
        held = sum(t.numel() * t.element_size() for t in cache.values())
    elif mode == "forward":
        model(batch.input_ids[:n], attention_mask=batch.attention_mask[:n])  # one class, as extraction runs it
        held = 0
    else:
        d = extract_directions(model, harmful, harmless, batch_size=len(harmful) * 2, progress=False)
        held = sum(t.numel() * t.element_size() for t in (d.harmfulness, d.refusal, d.candidates))
print(json.dumps({"peak_rise": status("VmHWM:") - before, "held": held}))
"""


def bench_memory(n: int) -> dict:
    """Peak-RSS rise of extraction vs full run_with_cache, one batch of 2n prompts, fresh process each."""
    out = {}
    for mode in ("cache", "forward", "extract"):
        # A fixed mmap threshold makes glibc return freed tensors to the OS, so RSS tracks live allocations.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
        res = subprocess.run([sys.executable, "-c", _MEM_CHILD, mode, str(n)], capture_output=True, text=True, env=env)
        if res.returncode != 0:
            raise SystemExit(f"memory child {mode} failed:\n{res.stderr[-2000:]}")
        out[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    return {
        "batch": 2 * n,
        "run_with_cache_peak_MB": out["cache"]["peak_rise"] / 2**20,
        "extract_peak_MB": out["extract"]["peak_rise"] / 2**20,
        "run_with_cache_held_MB": out["cache"]["held"] / 2**20,
        "extract_held_MB": out["extract"]["held"] / 2**20,
        "forward_peak_MB": out["forward"]["peak_rise"] / 2**20,
        "memory_ratio": out["extract"]["peak_rise"] / out["cache"]["peak_rise"],
    }


def bench_generation(model, n_prompts: int, new_tokens: int) -> dict:
    """Tokens/s of plain vs steered vs ablated greedy generation of the same prompts."""
    from harmlens.probes.directions import extract_directions
    from harmlens.probes.interventions import ablate, steer
    from harmlens.runtime import generate

    harmful, harmless = _prompts(max(n_prompts, 16))
    d = extract_directions(model, harmful[:16], harmless[:16], progress=False)
    layer = model.cfg.n_layers // 2
    prompts = harmless[:n_prompts]

    def run():
        generate(model, prompts, max_new_tokens=new_tokens, batch_size=n_prompts, progress=False)

    def steered():
        with steer(model, d.refusal[d.row(layer)], layer, coeff=1.0):
            run()

    def ablated():
        with ablate(model, d.refusal[d.row(layer)]):
            run()

    toks = n_prompts * new_tokens
    t_plain, t_steer, t_ablate = _best_of(run, 2), _best_of(steered, 2), _best_of(ablated, 2)
    return {
        "prompts": n_prompts,
        "new_tokens": new_tokens,
        "plain_tok_s": toks / t_plain,
        "steer_tok_s": toks / t_steer,
        "ablate_tok_s": toks / t_ablate,
        "steer_ratio": t_plain / t_steer,
        "ablate_ratio": t_plain / t_ablate,
    }


def main() -> None:
    """Run the three measurements and print their ratios against the targets."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64, help="prompts per class for extraction")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--mem-n", type=int, default=16, help="prompts per class in the memory batch")
    ap.add_argument("--gen-prompts", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    args = ap.parse_args()
    from harmlens.probes import load_model

    model = load_model()
    print(f"device: {next(model.parameters()).device}, torch threads: {torch.get_num_threads()}")
    ex = bench_extraction(model, args.n, args.batch_size)
    print(
        f"extraction: {ex['prompts']} prompts, bare forward {ex['bare_forward_s']:.2f}s, extract_directions "
        f"{ex['extract_s']:.2f}s -> throughput ratio {ex['throughput_ratio']:.2f}x (target >= 0.9x)"
    )
    mem = bench_memory(args.mem_n)
    print(
        f"memory: batch of {mem['batch']}: run_with_cache peak +{mem['run_with_cache_peak_MB']:.0f} MB "
        f"(holds {mem['run_with_cache_held_MB']:.0f} MB), extraction peak +{mem['extract_peak_MB']:.1f} MB "
        f"(holds {mem['extract_held_MB']:.2f} MB) -> ratio {100 * mem['memory_ratio']:.2f}% (target <= 2%); "
        f"a plain forward of one class's {args.mem_n} prompts peaks at +{mem['forward_peak_MB']:.1f} MB"
    )
    gen = bench_generation(model, args.gen_prompts, args.new_tokens)
    print(
        f"generation: plain {gen['plain_tok_s']:.1f} tok/s, steer {gen['steer_tok_s']:.1f} tok/s "
        f"({gen['steer_ratio']:.2f}x), ablate {gen['ablate_tok_s']:.1f} tok/s ({gen['ablate_ratio']:.2f}x) "
        f"(target >= 0.8x)"
    )
    print(json.dumps({"extraction": ex, "memory": mem, "generation": gen}, indent=1))


if __name__ == "__main__":
    main()
