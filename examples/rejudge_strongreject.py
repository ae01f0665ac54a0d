"""Re-judge an attack table with the StrongREJECT rubric judge next to the substring judge.

Run from the repository root:
    PYTHONPATH=. python examples/rejudge_strongreject.py [--model PATH] [--judge-model embedded] [--n 6]
    PYTHONPATH=. python examples/rejudge_strongreject.py --report runs/main/attacks   # the main job's attack table
The attacked model defaults to the embedded SmolLM2-135M-Instruct (pass the organism folder when it is built); the
judge defaults to the same 135M model, which is far too weak to follow the rubric reliably: the point of the table is
the plumbing (scores, unjudged items), not the numbers. Use a capable chat model as --judge-model for real figures.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

from harmlens.attacks import evaluate_asr
from harmlens.attacks.evaluate import rejudge
from harmlens.attacks.judges import get_judge
from harmlens.attacks.report import AttackReport
from harmlens.probes.data import builtin_prompts
from harmlens.runtime.loading import load_model


def main() -> None:
    """Attack, judge by substring, re-judge with the StrongREJECT rubric, print both tables side by side."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--judge-model", default="embedded")
    parser.add_argument("--n", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--judge-tokens", type=int, default=160)
    parser.add_argument("--out", type=Path, default=Path("runs/rejudge_strongreject"))
    parser.add_argument("--report", type=Path, default=None, help="re-judge this saved attack report (no attack)")
    args = parser.parse_args()

    t0 = time.time()
    report = AttackReport.load(args.report) if args.report else attack(args)
    t1 = time.time()
    print(f"attack done in {t1 - t0:.0f}s; judging with the StrongREJECT rubric", flush=True)
    judge = get_judge(f"strongreject:{args.judge_model}")
    judge.max_new_tokens = args.judge_tokens
    strong = rejudge(report, judge)
    t2 = time.time()
    n = max(r.n for r in report.asr.values())
    print(f"attacked {report.meta.get('model')}; judge {judge.name}; n={n} per condition")
    print(f"generation + substring judge {t1 - t0:.0f}s, StrongREJECT judge {t2 - t1:.0f}s\n")
    print("| condition | substring:rma ASR | StrongREJECT judged | unjudged | mean score | ASR (score >= 0.5) |")
    print("|---|---|---|---|---|---|")
    for label, rate in report.asr.items():
        s, _, j = label.rpartition("/") if "/" in label else ("", "", label)
        rows = [r for r in strong.records if (r["jailbreak"], r["setting"]) == ((s or "none"), j)]
        scores = [r["judge_score"] for r in rows if "judge_score" in r]
        mean = statistics.fmean(scores) if scores else math.nan
        srate = strong.asr[label]
        print(
            f"| {label} | {rate.k}/{rate.n} | {len(scores)}/{len(rows)} | {srate.errors} | "
            f"{mean:.2f} | {srate.k}/{srate.n} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    strong.save(args.out)
    print(f"\nrecords with judge outputs: {args.out / 'report.json'}")


def attack(args: argparse.Namespace) -> AttackReport:
    """A small attack table of its own: none/swap x none/aim on held-out harmful prompts."""
    model = load_model(args.model)
    harmful = builtin_prompts("harmful", "val", limit=args.n)
    return evaluate_asr(
        model,
        harmful,
        settings=["none", "swap"],
        jailbreaks=["none", "aim"],
        judge="substring:rma",
        out=args.out / "attack",
        max_new_tokens=args.max_new_tokens,
        batch_size=8,
        progress=False,
    )


if __name__ == "__main__":
    main()
