"""Time a full text-organism build (train + merge + evaluate + save) into a temporary folder.

    python benchmarks/organism_build.py [--steps N] [--no-eval] [--threads T]

Prints build time, training steps/s and tokens/s, evaluation time, and the threads and machine load: on a shared
machine wall time says little, so compare CPU time and seconds per step too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from harmlens.guards.organisms import TEXT_RECIPE, build_organism


def main() -> None:
    """Build once and print the timings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="override max_steps (default: the recipe's)")
    parser.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="at most this many torch CPU threads (the build also leaves busy cores alone)",
    )
    parser.add_argument("--keep", default=None, help="build into this folder instead of a temporary one")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = TEXT_RECIPE.config if args.steps is None else replace(TEXT_RECIPE.config, max_steps=args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.keep) if args.keep else Path(tmp) / "organism"
        load_start = os.getloadavg()[0]
        wall, cpu = time.perf_counter(), time.process_time()
        path = build_organism("text", config, out=out, force=True, evaluate=not args.no_eval, device="cpu")
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        card = json.loads((path / "card.json").read_text())
    tr = card["training"]
    result = {
        "build_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "cores": os.cpu_count(),
        "threads": card["environment"]["threads"],
        "load_avg_1min_at_end": round(os.getloadavg()[0], 2),
        "steps": tr["steps"],
        "train_seconds": tr["train_seconds"],
        "steps_per_s": round(tr["steps"] / tr["train_seconds"], 3),
        "s_per_step": round(tr["train_seconds"] / tr["steps"], 2),
        "tokens": tr["tokens"],
        "tokens_per_s": round(tr["tokens"] / tr["train_seconds"], 1),
        "eval_seconds": card["build_seconds"]["evaluate"],
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    if card.get("eval"):
        result["refusal_rates"] = {k: v["refusal_rate"] for k, v in card["eval"]["sets"].items()}
    print(
        f"build {result['build_seconds']:.0f} s (cpu {result['cpu_seconds']:.0f} s, {result['threads']} threads, "
        f"load {load_start:.2f} -> {result['load_avg_1min_at_end']}), training {tr['steps']} steps in "
        f"{tr['train_seconds']:.0f} s = {result['steps_per_s']:.3f} steps/s, {result['tokens_per_s']:.0f} tokens/s, "
        f"evaluation {result['eval_seconds']:.0f} s"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
