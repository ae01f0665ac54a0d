"""Fit LatentGuards (centroid and probe) on public prompt sets and evaluate them against baselines on jailbreaks.

Run: python examples/latent_guard_eval.py --data ../shared/data --out runs/latent_guard [--model organism|base|PATH]
     [--n-eval 100] [--n-wrapped 40] [--gcg 8]
Fit data: Arditi harmful_train (259) and as many Alpaca harmless_train prompts; 25% of each is held out to choose
the layers and calibrate alpha to 5% FPR. Evaluation prompts are held out from the fit (and the organism's training).
Writes guard_centroid.safetensors, guard_probe.safetensors, report.{json,md}, roc.png and summary.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harmlens.attacks.gcg import GCGConfig, gcg_many  # noqa: E402
from harmlens.guards.evaluation.baselines import (
    BehaviourGuard,
    KeywordGuard,
    LatentDetector,
    PerplexityGuard,  # noqa: E402
    refuse_detector,
)
from harmlens.guards.evaluation.report import evaluate_guard  # noqa: E402
from harmlens.guards.evaluation.sets import gcg_sets, gptfuzzer_wrap, named_wrap, rma_perturb  # noqa: E402
from harmlens.guards.latent.configs import CentroidConfig, ProbeConfig  # noqa: E402
from harmlens.guards.latent.guard import LatentGuard  # noqa: E402
from harmlens.guards.organisms.datasets import eval_prompts  # noqa: E402
from harmlens.probes.data import read_prompts  # noqa: E402
from harmlens.runtime.loading import load_model  # noqa: E402


def load(kind: str):
    """The text organism (if built), the embedded base model, or a model folder."""
    if kind == "organism":
        from harmlens.guards.organisms import is_built, load_organism, organism_path

        if not is_built(organism_path("text")):
            raise SystemExit("the text organism is not built yet: run `python -m harmlens.guards build-organism text`")
        return load_organism("text")
    return load_model(None if kind == "base" else kind)


def build_sets(model, data: Path, n: int, n_wrapped: int, n_gcg: int, seed: int) -> dict:
    """Evaluation sets: plain, refused-harmless / accepted-harmful sources, jailbreak-wrapped, RMA, GCG."""
    rng = random.Random(seed)
    harmful, harmless = eval_prompts("harmful")[:n], eval_prompts("harmless")[:n]
    sorry = read_prompts(data / "harmful" / "sorry_badq.jsonl")
    wrapped_h, wrapped_l = harmful[:n_wrapped], harmless[:n_wrapped]
    sets = {
        "plain_harmful": (harmful, True),
        "plain_harmless": (harmless, False),
        "xstest_safe": (eval_prompts("xstest"), False),
        "sorry_bench": (rng.sample(sorry, n), True),
        "gptfuzzer": (gptfuzzer_wrap(wrapped_h, seed=seed), True),
        "gptfuzzer_harmless": (gptfuzzer_wrap(wrapped_l, seed=seed), False),
        "text_jailbreaks": (named_wrap(wrapped_h), True),
        "text_jailbreaks_harmless": (named_wrap(wrapped_l), False),
        "rma_swap": (rma_perturb(model, harmful), True),
        "rma_swap_harmless": (rma_perturb(model, harmless), False),
    }
    if n_gcg:
        start = time.perf_counter()
        results = gcg_many(model, harmful[:n_gcg], GCGConfig(steps=25, batch=48, top_k=64), progress=True)
        sets["gcg"] = ([r.adversarial for r in results], True)
        print(
            f"GCG: {n_gcg} suffixes in {time.perf_counter() - start:.0f} s, "
            f"{sum(r.target_reached for r in results)} reached the target",
            flush=True,
        )
    return sets


def main() -> int:
    """Fit, evaluate, write the report."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", default="organism", help="organism, base or a model folder")
    p.add_argument("--n-fit", type=int, default=259)
    p.add_argument("--n-eval", type=int, default=100)
    p.add_argument("--n-wrapped", type=int, default=40)
    p.add_argument("--gcg", type=int, default=8, help="GCG-suffixed prompts (0 = skip; slow on CPU)")
    p.add_argument(
        "--gcg-json",
        type=Path,
        default=None,
        help="reuse the suffixes of a `python -m harmlens.attacks gcg` run (its gcg.json) instead of running GCG here",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    model = load(args.model)
    harmful = read_prompts(args.data / "harmful" / "harmful_train.json")[: args.n_fit]
    harmless = read_prompts(args.data / "harmless" / "harmless_train.json")[: args.n_fit]
    calib = read_prompts(args.data / "harmless" / "harmless_train.json")[args.n_fit : args.n_fit + 100]
    start = time.perf_counter()
    guard = LatentGuard.fit(model, harmful, harmless, CentroidConfig(target_fpr=0.05, seed=args.seed), progress=True)
    probe = LatentGuard.fit(model, harmful, harmless, ProbeConfig(target_fpr=0.05, seed=args.seed), progress=True)
    fit_s = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    guard.save(args.out / "guard_centroid.safetensors")
    probe.save(args.out / "guard_probe.safetensors")
    print(guard, probe, f"fitted in {fit_s:.0f} s", sep="\n", flush=True)
    sets = build_sets(model, args.data, args.n_eval, args.n_wrapped, 0 if args.gcg_json else args.gcg, args.seed)
    if args.gcg_json:
        sets.update(
            gcg_sets(
                args.gcg_json, sets["plain_harmful"][0][: args.n_wrapped], sets["plain_harmless"][0][: args.n_wrapped]
            )
        )
    ppl = PerplexityGuard(model)
    ppl.calibrate(calib, 0.05)
    behaviour = BehaviourGuard(model, max_new_tokens=24)
    report = evaluate_guard(
        guard,
        sets,
        baselines=[LatentDetector(probe, "latent_probe"), refuse_detector(guard), KeywordGuard(), ppl, behaviour],
    )
    for name, source, refused in (("xstest_refused", "xstest_safe", True), ("sorry_accepted", "sorry_bench", False)):
        idx = [i for i, f in enumerate(report.flags["behaviour"][source]) if f == refused]
        if idx:
            report.add_subset(name, source, idx)
    report.meta.update(
        model_kind=args.model,
        fit_seconds=round(fit_s, 1),
        perplexity_threshold=ppl.threshold,
        probe={"layers": probe.layers, "alpha": probe.alpha},
        fit={k: v for k, v in guard.metadata["fit"].items() if k != "windows"},
    )
    report.save(args.out)
    summary = {
        "model": guard.metadata["model"],
        "centroid": {"layers": guard.layers, "alpha": guard.alpha, "val_auroc": guard.metadata["fit"].get("val_auroc")},
        "probe": {"layers": probe.layers, "alpha": probe.alpha, "val_auroc": probe.metadata["fit"].get("val_auroc")},
        "seconds": report.meta["seconds"],
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(report.to_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
