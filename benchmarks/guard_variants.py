"""Per-variant Latent Guard figures on the text organism, and two-read candidates decided on calibrated evidence.

Fits each variant (centroid, probe, span-linear, span-mlp) on the shipped training prompts at a 5% target FPR, reads
every evaluation and calibration prompt once for all of them (guards/evaluation/shared_read), caches the scores, and
reports per detector: TPR on plain and jailbreak-wrapped harmful prompts (GPTFuzzer templates and named jailbreaks
the span fits never saw), FPR on harmless, XSTest-safe and wrapped-harmless prompts, TPR at 1% / 5% FPR, AUROC. The
two-read candidates (benchmarks/guard_variants_stats.py) combine a t_inst part and the span-mlp part from scores.

Calibration sources, all disjoint from the fit and the evaluation sets: Alpaca (shared harmless_val, two halves: one
is the reference the parts are standardised on, the other calibrates), XSTest-safe (odd indices in each type; the
evaluation takes even ones) and Alpaca wrapped in the span fit's own wrappers (the evaluation uses held-out ones).

Run: nice python3 benchmarks/guard_variants.py --out runs/guard_variants [--n 64] [--n-cal 96] [--refit]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SHARED = Path(os.environ.get("HARMLENS_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
VARIANTS = ("centroid", "probe", "span-mlp", "span-linear")


def _share_fit_reads() -> None:
    """Memoise the fits' activation reads so centroid/probe and span-linear/span-mlp read their prompts once."""
    from harmlens.guards.fitting import fit, span_fit

    def memo(fn, key):
        cache: dict = {}

        def wrapped(*args, **kwargs):
            k = key(*args, **kwargs)
            if k not in cache:
                cache[k] = fn(*args, **kwargs)
            return cache[k]

        return wrapped

    fit._acts = memo(fit._acts, lambda m, f, ps, layers, *a, **kw: (tuple(map(str, ps)), tuple(layers), kw.get("what")))
    span_fit._gather = memo(
        span_fit._gather,
        lambda m, ex, rows, *a: (tuple((e[0].text, tuple(e[1]), tuple(e[2]), e[3]) for e in ex), tuple(rows)),
    )


def fit_variants(model, out: Path, refit: bool, names=VARIANTS) -> dict:
    """Each variant fitted on the main job's training prompts at target_fpr 0.05 (loaded from `out` when cached)."""
    from harmlens.guards.latent.configs import config_class
    from harmlens.guards.latent.guard import LatentGuard
    from harmlens.probes.data import builtin_prompts

    harmful, harmless = builtin_prompts("harmful", "train"), builtin_prompts("harmless", "train")
    guards, seconds = {}, {}
    _share_fit_reads()
    for name in names:
        path = out / "guards" / f"{name}.safetensors"
        if path.is_file() and not refit:
            guards[name] = LatentGuard.load(path, model)
            continue
        start = datetime.datetime.now()
        guard = LatentGuard.fit(model, harmful, harmless, config_class(name)(target_fpr=0.05), progress=True)
        guard.save(path)
        seconds[name] = (datetime.datetime.now() - start).total_seconds()
        print(f"fitted {name} in {seconds[name]:.0f} s: {guard!r}", flush=True)
        guards[name] = guard
    return guards


def _xstest_split(n: int, seed: int) -> tuple[list[str], list[str]]:
    """(evaluation: n drawn from even indices, stratified by order; calibration: every odd index) of XSTest-safe."""
    from harmlens.guards.organisms.datasets import eval_prompts

    xs = eval_prompts("xstest")
    even = [p for i, p in enumerate(xs) if i % 2 == 0]
    step = len(even) / min(n, len(even))
    return [even[int(k * step)] for k in range(min(n, len(even)))], [p for i, p in enumerate(xs) if i % 2 == 1]


def _alpaca_pool(exclude: set[str], k: int, seed: int) -> list[str]:
    rows = json.loads((SHARED / "harmless/harmless_val.json").read_text(encoding="utf-8"))
    pool = sorted({r["instruction"] for r in rows} - exclude)
    return random.Random(seed).sample(pool, k)


def build_sets(n: int, n_harmless: int, n_cal: int, seed: int, exclude: set[str]) -> tuple[dict, dict]:
    """(evaluation sets {name: (prompts, harmful?)}, calibration sources {name: prompts})."""
    from harmlens.guards.evaluation.sets import gptfuzzer_wrap, named_wrap, shipped_sets
    from harmlens.guards.fitting.span_fit import FIT_NAMED, fit_gptfuzzer_ids
    from harmlens.guards.organisms.datasets import eval_prompts
    from harmlens.probes.data import builtin_prompts

    sets = shipped_sets(None, limit=n, seed=seed, exclude=exclude)
    sets["plain_harmless"] = (eval_prompts("harmless")[:n_harmless], False)
    xs_eval, xs_cal = _xstest_split(n, seed)
    sets["xstest_safe"] = (xs_eval, False)
    used = set(builtin_prompts("harmless")) | set(eval_prompts("harmless"))
    alpaca = _alpaca_pool(used, 3 * n_cal, seed)
    wrapped = alpaca[2 * n_cal :]
    half = len(wrapped) // 2
    cal = {
        "alpaca_ref": alpaca[:n_cal],
        "alpaca": alpaca[n_cal : 2 * n_cal],
        "xstest": xs_cal,
        "wrapped": named_wrap(wrapped[:half], FIT_NAMED)
        + gptfuzzer_wrap(wrapped[half:], fit_gptfuzzer_ids(seed), seed),
    }
    return sets, cal


def score_everything(guards: dict, prompts: dict[str, list], cache: Path) -> dict:
    """{set: {variant: [score]}} for every prompt list, one shared read per batch; cached in `cache`."""
    from harmlens.guards.evaluation.shared_read import shared_check

    done = json.loads(cache.read_text()) if cache.is_file() else {}
    names = list(guards)
    for set_name, ps in prompts.items():
        if set_name in done and all(len(done[set_name].get(v, [])) == len(ps) for v in names):
            continue
        print(f"scoring {set_name} ({len(ps)} prompts)", flush=True)
        verdicts = shared_check([guards[v] for v in names], ps)
        done[set_name] = {v: [float(x.score) for x in vs] for v, vs in zip(names, verdicts)}
        cache.write_text(json.dumps(done))
    return done


def main(argv: list[str] | None = None) -> None:
    """Fit, score (cached), and write variants.json + variants.md into --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/guard_variants"))
    parser.add_argument("--n", type=int, default=64, help="prompts per harmful / wrapped / XSTest evaluation set")
    parser.add_argument("--n-harmless", type=int, default=100, help="plain harmless evaluation prompts")
    parser.add_argument("--n-cal", type=int, default=96, help="Alpaca prompts per calibration half and wrapped set")
    parser.add_argument("--target", type=float, default=0.05, help="target FPR of every calibration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--refit", action="store_true", help="fit again even when guards are cached in --out")
    parser.add_argument("--fit-only", action="store_true")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma list of variants to fit and score")
    args = parser.parse_args(argv)
    command = "python3 " + " ".join(shlex.quote(a) for a in sys.argv)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"{command}\n{date}", flush=True)

    import torch

    from harmlens.guards import load_organism
    from harmlens.guards.evaluation.sets import fit_wrappers

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    model = load_organism("text")
    guards = fit_variants(model, args.out, args.refit, args.variants.split(","))
    if args.fit_only:
        return
    exclude = set().union(*(fit_wrappers(g) for g in guards.values()))
    sets, cal = build_sets(args.n, args.n_harmless, args.n_cal, args.seed, exclude)
    prompts = {k: v[0] for k, v in sets.items()} | {f"cal:{k}": v for k, v in cal.items()}
    scores = score_everything(guards, prompts, args.out / "scores.json")
    from guard_variants_stats import report

    alphas = {v: g.alpha for v, g in guards.items()}
    result = report(scores, {k: v[1] for k, v in sets.items()}, list(cal), alphas, args.target)
    result["meta"] = {"command": command, "date": date, "n": {k: len(v) for k, v in prompts.items()}}
    (args.out / "variants.json").write_text(json.dumps(result, indent=1))
    from guard_variants_stats import markdown

    (args.out / "variants.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
