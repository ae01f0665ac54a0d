"""Fit a Latent Guard on the VLM organism; evaluate it on the shipped held-out sets and the 6 image settings.

    python examples/vlm_guard_eval.py [--out runs/vlm_guard] [--n 32] [--read t_inst|span] [--n-fit 128]
Fit: the first --n-fit built-in training prompts per class (text only), alpha calibrated to 5% FPR (conformal);
`--read t_inst` (default) is the centroid rule, `--read span` the span guard (MLP token probe, its fit wrappers left
out of the jailbreak sets); baseline: the Δrefuse rule.
Image sets: every held-out prompt under img_in / img_end / img_out, as is and swapped, with one built-in synthetic
image (pixel_values in the guard's forward). Writes guard.safetensors, report.{json,md} and roc.png.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harmlens.guards  # noqa: E402
from harmlens.guards.evaluation.report import evaluate_guard  # noqa: E402
from harmlens.guards.evaluation.sets import fit_wrappers, shipped_sets  # noqa: E402
from harmlens.guards.fitting.images import ImageAwareDetector, image_sets  # noqa: E402
from harmlens.guards.latent.configs import CentroidConfig, SpanMLPConfig  # noqa: E402
from harmlens.guards.latent.guard import LatentGuard  # noqa: E402
from harmlens.probes.data import builtin_prompts  # noqa: E402


def main() -> None:
    """Fit, evaluate, save and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/vlm_guard"))
    parser.add_argument("--n", type=int, default=32, help="prompts per evaluation set")
    parser.add_argument("--read", choices=("t_inst", "span"), default="t_inst", help="the guard's read")
    parser.add_argument("--n-fit", type=int, default=128, help="built-in training prompts per class (at most 259/300)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    vlm = harmlens.guards.load_organism("vlm")
    config = SpanMLPConfig(target_fpr=0.05) if args.read == "span" else CentroidConfig(target_fpr=0.05)
    guard = LatentGuard.fit(
        vlm,
        builtin_prompts("harmful", "train")[: args.n_fit],
        builtin_prompts("harmless", "train")[: args.n_fit],
        config,
        progress=args.read == "span",
    )
    args.out.mkdir(parents=True, exist_ok=True)
    guard.save(args.out / "guard.safetensors")
    print(f"fitted in {time.perf_counter() - start:.0f} s: layers {guard.layers}, alpha {guard.alpha:.4g}", flush=True)
    sets = shipped_sets(vlm, limit=args.n, exclude=fit_wrappers(guard))
    sets.update(image_sets(vlm, sets["plain_harmful"][0], sets["plain_harmless"][0]))
    report = evaluate_guard(
        ImageAwareDetector(guard, vlm.processor),
        sets,
        baselines=[ImageAwareDetector(guard.refusal_guard(), vlm.processor, "delta_refuse")],
    )
    report.meta.update(model=guard.metadata.get("model"), layers=guard.layers, alpha=guard.alpha)
    report.save(args.out)
    print(report.to_markdown(), f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
