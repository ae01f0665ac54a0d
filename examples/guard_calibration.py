"""How the α calibration rule and the calibration set move a saved guard's error rates on held-out sets.

    python examples/guard_calibration.py GUARD [--model organism] [--n 100] [--n-alpaca 400] [--out DIR]

Scores the guard once on two calibration pools: the harmless prompts `python -m harmlens.guards fit` holds out (25% of the
built-in train split, seed 0) and --n-alpaca shipped Alpaca prompts (the organism's training prompts, outside every
guard fit). It also scores the held-out evaluation sets of harmlens.guards.evaluation.sets.shipped_sets, leaving out the guard's fit
wrappers. Then it sets α on each pool by each rule ('empirical': exactly 5% of the pool flagged; 'conformal': expected
FPR ≤ 5% on new prompts, see harmlens.guards.latent.calibration.flagged_allowed) and prints the share of each set flagged.
Writes OUT/calibration.{json,md} (default OUT: runs/guard_calibration).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harmlens.guards.evaluation.sets import fit_wrappers, shipped_sets  # noqa: E402
from harmlens.guards.fitting.splits import hold_out  # noqa: E402
from harmlens.guards.latent.calibration import CALIBRATION_RULES, calibration_record, threshold_for_fpr  # noqa: E402
from harmlens.guards.latent.guard import LatentGuard  # noqa: E402
from harmlens.guards.organisms.datasets import harmless_train  # noqa: E402
from harmlens.probes.data import builtin_prompts  # noqa: E402
from harmlens.runtime.loading import load_model  # noqa: E402

TARGET = 0.05


def calibration_pools(n_alpaca: int) -> dict[str, list[str]]:
    """{pool name: harmless prompts}: the CLI fit's held-out split and the first n_alpaca shipped Alpaca prompts."""
    harmful, harmless = builtin_prompts("harmful", "train"), builtin_prompts("harmless", "train")
    _, _, _, held = hold_out(harmful, harmless, None, None, val_fraction=0.25, rng=random.Random(0), target_fpr=TARGET)
    return {"fit hold-out": held, "Alpaca": [i for i, _ in harmless_train(n_alpaca)]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("guard")
    p.add_argument("--model", default="organism")
    p.add_argument("--n", type=int, default=100, help="prompts per evaluation set")
    p.add_argument("--n-alpaca", type=int, default=400)
    p.add_argument("--out", default="runs/guard_calibration")
    args = p.parse_args(argv)
    model = load_model(args.model)
    guard = LatentGuard.load(args.guard, model)
    pools = calibration_pools(args.n_alpaca)
    sets = {k: v for k, (v, _) in shipped_sets(model, limit=args.n, exclude=fit_wrappers(guard)).items()}
    scores = {}
    for name, prompts in {**pools, **sets}.items():
        scores[name] = [v.score for v in guard.check(prompts)]
        print(f"scored {name}: {len(prompts)} prompts", flush=True)
    columns = []
    for pool in pools:
        for rule in CALIBRATION_RULES:
            alpha = threshold_for_fpr(scores[pool], TARGET, rule)
            flagged = {k: sum(s >= alpha for s in v) / len(v) for k, v in scores.items()}
            columns.append(
                {
                    "pool": pool,
                    "alpha": alpha,
                    "flagged": flagged,
                    **calibration_record(len(scores[pool]), TARGET, rule),
                }
            )
    head = (
        "| set (n) | "
        + " | ".join(f"{c['pool']} ({c['n_harmless']}), {c['rule']} (α = {c['alpha']:.2f})" for c in columns)
        + " |"
    )
    rows = [
        f"| {k} ({len(scores[k])}) | " + " | ".join(f"{100 * c['flagged'][k]:.1f}%" for c in columns) + " |"
        for k in scores
    ]
    md = (
        "\n".join(
            [
                f"Share flagged by `{args.guard}` at α calibrated for {TARGET:.0%} FPR:",
                "",
                head,
                "|---" * (len(columns) + 1) + "|",
                *rows,
            ]
        )
        + "\n"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(
        json.dumps({"guard": args.guard, "target_fpr": TARGET, "columns": columns, "scores": scores}, indent=1),
        encoding="utf-8",
    )
    (out / "calibration.md").write_text(md, encoding="utf-8")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
