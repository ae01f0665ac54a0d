"""Adversarial-training throughput (tokens/s): the RMA-perturbed mix vs the same examples unperturbed.

    OMP_NUM_THREADS=1 python benchmarks/adversarial_perf.py [--steps 10] [--model organism|base|PATH] [--device cpu]

Prints the device, threads and machine load, then tokens/s and s/step of a few LoRA steps on (1) the plain examples
and (2) the adversarial mix (none + swap, a quarter wrapped in text jailbreaks: longer prompts), and an estimate of
a full 150-step run, in wall and CPU seconds (on a shared machine CPU seconds are the comparable number). The full
run's own time is in `python -m harmlens.guards adversarial-train`'s summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from harmlens.guards.organisms import datasets
from harmlens.guards.pipeline.subjects import load_subject
from harmlens.guards.tuning.adversarial import Stage, default_config, render_examples
from harmlens.guards.tuning.training import Example, train
from harmlens.runtime.chat import role_template

JAILBREAKS = ("aim", "prefix_injection", "refusal_suppression", "evil_confidant")


def measure(model, examples, config, transform=None) -> dict:
    """Train `config.max_steps` steps and return tokens, seconds and rates."""
    start, cpu = time.perf_counter(), time.process_time()
    adapter = train(model, examples, config=config, prompt_transform=transform, progress=False)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    m = adapter.meta
    return {
        "steps": m["steps"],
        "tokens": m["tokens"],
        "train_seconds": m["train_seconds"],
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "tokens_per_s": round(m["tokens"] / m["train_seconds"], 1),
        "tokens_per_cpu_s": round(m["tokens"] / cpu, 1),
        "s_per_step": round(m["train_seconds"] / m["steps"], 2),
        "cpu_s_per_step": round(cpu / m["steps"], 2),
    }


def main() -> None:
    """Run both measurements and print them as JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="organism")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_subject(args.model, args.device)
    device = str(next(model.original_model.parameters()).device)
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    print(
        f"device: {device} [{name}], torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    harmful, benign = datasets.harmful_train(), datasets.harmless_train(400)
    config = default_config(model, max_steps=args.steps, device=args.device)
    stage = Stage(("none", "swap"), args.steps, JAILBREAKS)
    rendered = render_examples(role_template(model), harmful, benign, stage, seed=1)
    texts = [r.text for r in rendered]
    examples = [Example(r.instruction, r.response) for r in rendered]
    plain = [Example(h, e.response) for h, e in zip(harmful + [b[0] for b in benign], examples)]
    result = {
        "device": device,
        "device_name": name,
        "threads": torch.get_num_threads(),
        "plain": measure(model, plain, config),
        "adversarial_mix": measure(model, examples, config, lambda _p, i: texts[i]),
    }
    mix = result["adversarial_mix"]
    result["estimated_150_step_run_s"] = round(150 * mix["s_per_step"], 0)
    result["estimated_150_step_run_cpu_s"] = round(150 * mix["cpu_s_per_step"], 0)  # = wall time on a free core
    result["load_avg_1min_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
