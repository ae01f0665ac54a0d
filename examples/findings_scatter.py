"""Finding 5 (Zhao et al. Fig. 3): Δharmful vs Δrefuse belief scores of prompt groups on the text organism.

    python examples/findings_scatter.py [--out runs/findings/scatter] [--n 48] [--per-jailbreak 6] [--quick]

Centroids (Zhao's classifier.ipynb): refused-harmful vs accepted-harmless training prompts at t_inst (C_hf, C_hl)
and at t_post-inst (C_refuse, C_accept), i.e. the class means of the refusal-filtered direction extraction.
Δharmful = mean over all layers of cos(h_l, C_hf) - cos(h_l, C_hl) at t_inst; Δrefuse likewise at t_post-inst.
Groups, all held out from the organism's training: HarmBench/AdvBench harmful prompts (split by whether the
organism refuses them), Alpaca harmless prompts, XSTest safe prompts split into refused / accepted (the organism's
cached build replies, else fresh ones), and harmful prompts wrapped in the 7 named text jailbreaks (split by
whether the jailbreak worked). Behaviour = JailbreakBench substring judge on a greedy reply.
Writes scatter.json and beliefs_scatter.png.
"""

from __future__ import annotations

import json
import time

import _findings_common as C

from harmlens.attacks.jailbreaks import NAMED
from harmlens.guards.organisms import REPLIES, organism_path
from harmlens.guards.organisms.datasets import eval_prompts
from harmlens.probes import Centroids, belief_scores, generate
from harmlens.probes.plots import plot_belief_scatter


def extra(p) -> None:
    """Script-specific options."""
    p.add_argument("--per-jailbreak", type=int, default=6, help="harmful prompts wrapped by each named jailbreak")
    p.add_argument("--max-new-tokens", type=int, default=24)


def behaviour(model, prompts: list[str], max_new_tokens: int) -> list[bool]:
    """Whether the organism refuses each prompt (greedy reply, substring judge)."""
    replies = generate(model, prompts, max_new_tokens=max_new_tokens, batch_size=16, progress=False)
    return [C.refused(r) for r in replies]


def xstest_split(model, max_new_tokens: int) -> tuple[list[str], list[str], str]:
    """XSTest safe prompts the organism refuses / accepts, from its cached build replies when present."""
    path = organism_path("text") / REPLIES
    if path.is_file():
        rows = json.loads(path.read_text(encoding="utf-8")).get("xstest")
        if rows:
            return [p for p, r in rows if C.refused(r)], [p for p, r in rows if not C.refused(r)], str(path)
    prompts = eval_prompts("xstest")
    flags = behaviour(model, prompts, max_new_tokens)
    return [p for p, f in zip(prompts, flags) if f], [p for p, f in zip(prompts, flags) if not f], "generated"


def stats(scores) -> dict:
    """Group summary of belief scores."""
    dh, dr = scores.delta_harmful, scores.delta_refuse
    sd = lambda x: float(x.std()) if len(x) > 1 else 0.0  # noqa: E731
    return {
        "n": len(scores),
        "delta_harmful_mean": float(dh.mean()),
        "delta_harmful_std": sd(dh),
        "delta_refuse_mean": float(dr.mean()),
        "delta_refuse_std": sd(dr),
        "frac_delta_harmful_pos": float((dh > 0).float().mean()),
        "frac_delta_refuse_pos": float((dr > 0).float().mean()),
    }


def main() -> None:
    """Build the groups, score them, write JSON + scatter, print a table."""
    args = C.parse_args(__doc__, "scatter", 48, 6, extra)
    per_jb = 2 if args.quick else args.per_jailbreak
    start = time.perf_counter()
    model = C.setup()
    cents = Centroids.from_directions(C.directions(model, args.n_train, args.cache))
    hb, adv = eval_prompts("harmful", source="harmbench_val"), eval_prompts("harmful", source="advbench")
    harmful = hb[: args.n // 2] + adv[: args.n - args.n // 2]
    refused = behaviour(model, harmful, args.max_new_tokens)
    xs_refused, xs_accepted, xs_source = xstest_split(model, args.max_new_tokens)
    wrapped = [(jb.name, p, jb(p)) for jb in NAMED.values() for p in harmful[:per_jb]]
    jb_refused = behaviour(model, [w for _, _, w in wrapped], args.max_new_tokens)
    groups = {
        "harmful (refused)": [p for p, f in zip(harmful, refused) if f],
        "harmful (accepted)": [p for p, f in zip(harmful, refused) if not f],
        "harmless": eval_prompts("harmless")[: args.n],
        "XSTest safe (refused)": xs_refused,
        "XSTest safe (accepted)": xs_accepted[: args.n],
        "jailbreak (worked)": [w for (_, _, w), f in zip(wrapped, jb_refused) if not f],
        "jailbreak (refused)": [w for (_, _, w), f in zip(wrapped, jb_refused) if f],
    }
    scores = {k: belief_scores(model, v, cents) for k, v in groups.items() if v}
    jb_table = {}
    all_jb = belief_scores(model, [w for _, _, w in wrapped], cents)
    for name in NAMED:
        idx = [i for i, (n, _, _) in enumerate(wrapped) if n == name]
        jb_table[name] = {
            "asr": C.rate([not jb_refused[i] for i in idx]),
            "delta_harmful_mean": float(all_jb.delta_harmful[idx].mean()),
            "delta_refuse_mean": float(all_jb.delta_refuse[idx].mean()),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    plot = plot_belief_scatter(
        {f"{k} ({len(s)})": (s.delta_harmful.tolist(), s.delta_refuse.tolist()) for k, s in scores.items()},
        args.out / "beliefs_scatter.png",
        title="Organism belief scores (Zhao Fig. 3)",
    )
    out = {
        "layers": cents.layers,
        "xstest_source": xs_source,
        "summary": {k: stats(s) for k, s in scores.items()},
        "jailbreaks": jb_table,
        "points": {k: s.to_rows() for k, s in scores.items()},
        "seconds": round(time.perf_counter() - start, 1),
    }
    C.write_json(args.out / "scatter.json", out)
    print(f"\n{'group':24s} {'n':>4s} {'Δharmful':>16s} {'Δrefuse':>16s} {'Δh>0':>6s} {'Δr>0':>6s}")
    for k, s in out["summary"].items():
        print(
            f"{k:24s} {s['n']:4d} {s['delta_harmful_mean']:+8.3f}±{s['delta_harmful_std']:.3f} "
            f"{s['delta_refuse_mean']:+8.3f}±{s['delta_refuse_std']:.3f} {s['frac_delta_harmful_pos']:6.2f} "
            f"{s['frac_delta_refuse_pos']:6.2f}"
        )
    print(f"\n{'jailbreak':20s} {'ASR':>5s} {'Δharmful':>9s} {'Δrefuse':>9s}   ({per_jb} harmful prompts each)")
    for name, r in jb_table.items():
        print(f"{name:20s} {r['asr']:5.2f} {r['delta_harmful_mean']:+9.3f} {r['delta_refuse_mean']:+9.3f}")
    print(f"wrote {args.out / 'scatter.json'}, {plot} in {C.elapsed(start)}")


if __name__ == "__main__":
    main()
