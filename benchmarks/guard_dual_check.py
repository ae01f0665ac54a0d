"""End-to-end check of the dual guard on the organism: assemble it from the cached centroid and span-mlp fits of
benchmarks/guard_variants.py (harmlens.guards.fitting.dual_fit._merge), scale its parts on the cached Alpaca reference
scores, and compare its own scores (one real read per prompt) with max(z_t, z_s) computed from the parts' cached scores.

Run: nice python3 benchmarks/guard_dual_check.py --out runs/guard_variants [--sets plain_harmful,xstest_safe]
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> None:
    """Assemble, score the chosen cached sets again through the guard, print the largest score difference."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/guard_variants"))
    parser.add_argument("--sets", default="plain_harmful,xstest_safe")
    parser.add_argument("--n", type=int, default=48)
    args = parser.parse_args(argv)
    print("python3 " + " ".join(shlex.quote(a) for a in sys.argv), datetime.datetime.now(datetime.timezone.utc))
    import torch
    from guard_variants import build_sets

    from harmlens.guards import LatentGuard, load_organism
    from harmlens.guards.fitting.dual_fit import _merge
    from harmlens.guards.fitting.scales import scales_from
    from harmlens.guards.latent.variants.dual import DualConfig
    from harmlens.io import model_signature

    model = load_organism("text")
    t, s = (LatentGuard.load(args.out / "guards" / f"{v}.safetensors", model) for v in ("centroid", "span-mlp"))
    layers, tensors = _merge(t, s)
    scores = json.loads((args.out / "scores.json").read_text())
    ref = {
        "t_inst": torch.tensor(scores["cal:alpaca_ref"]["centroid"]),
        "span": torch.tensor(scores["cal:alpaca_ref"]["span-mlp"]),
    }
    meta = {
        "format": s.metadata["format"],
        "version": s.metadata["version"],
        "mlp": s.metadata["mlp"],
        **model_signature(model),
        "variant": "dual",
        "method": "dual",
        "position": "span",
        "token_probe": "mlp",
        "layers": layers,
        "parts": {"t_inst": t.layers, "span": s.layers},
        "scales": scales_from([{k: (v, v[:, None]) for k, v in ref.items()}]),
        "corroborate": None,
        "alpha": 0.0,
        "target_fpr": 0.05,
        "config": DualConfig().to_dict(),
        "fit": {},
    }
    guard = LatentGuard(tensors, meta, model)
    sets, _ = build_sets(args.n, 100, 64, 0, set())
    sc = meta["scales"]
    for name in args.sets.split(","):
        prompts = sets[name][0]
        got = torch.tensor([v.score for v in guard.check(prompts)])
        z = [
            (torch.tensor(scores[name][v]) - sc[k][0]) / sc[k][1]
            for k, v in (("t_inst", "centroid"), ("span", "span-mlp"))
        ]
        want = torch.maximum(*z)
        print(
            f"{name}: n={len(prompts)} max |guard score - max(z_t, z_s) from cached parts| = {float((got - want).abs().max()):.2e}"
        )


if __name__ == "__main__":
    main()
