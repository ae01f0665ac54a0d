"""Finding 2 (Arditi et al.): select a refusal direction on the text organism, then ablate it / add it.

    python examples/findings_arditi.py [--out runs/findings/arditi] [--n 32] [--n-select 12]
        [--layers 10:24:3] [--positions=-1,-2,-3,-4,-5,-6] [--kl-threshold 0.5] [--max-new-tokens 32] [--quick]

Candidates are the Arditi difference-in-means vectors at the post-instruction tokens (resid_pre), extracted from
the organism's harmful training prompts vs built-in Alpaca train prompts; the search is restricted to a layer
stride (--layers start:stop:step) so it runs in minutes on CPU. The KL filter is relaxed from Arditi's 0.1 to 0.5:
on the organism every candidate that bypasses refusal has KL > 0.1 on the harmless selection prompts (the JSON
reports what KL <= 0.1 would keep; the library's fallback now relaxes KL first too). Selection uses other organism training prompts
(harmful_train[n_train:]) and built-in Alpaca val prompts; evaluation uses held-out prompts (guards eval sets:
HarmBench val + AdvBench, Alpaca val) with greedy replies and the JailbreakBench substring judge. Successful
"jailbreaks" are also checked for coherence (harmlens.attacks.judges.coherent) and topic (a shared content word).
Writes arditi.json (all replies), selection_scores.png and rates.png.
"""

from __future__ import annotations

import time

import _findings_common as C
import matplotlib.pyplot as plt
import numpy as np
import torch

from harmlens.guards.organisms.datasets import eval_prompts, harmful_train
from harmlens.probes import ablate, generate, last_token_logits, select_refusal_direction, steer
from harmlens.probes.data import builtin_prompts
from harmlens.probes.plots import _save, plot_score_grids
from harmlens.probes.selection import kl_last
from harmlens.runtime.chat import chat_format


def extra(p) -> None:
    """Script-specific options."""
    p.add_argument("--n-select", type=int, default=12, help="selection prompts per class")
    p.add_argument("--layers", default="10:24:3", help="candidate layers start:stop:step (Arditi: < 0.8 L = 24)")
    p.add_argument("--kl-threshold", type=float, default=0.5, help="discard candidates above this KL (Arditi: 0.1)")
    p.add_argument("--positions", default="-1,-2,-3,-4,-5,-6", help="candidate post-instruction offsets")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--show", type=int, default=3, help="replies to print per condition")


def held_out_harmful(n: int) -> list[str]:
    """Half HarmBench val, half AdvBench held-out prompts."""
    hb, adv = eval_prompts("harmful", source="harmbench_val"), eval_prompts("harmful", source="advbench")
    return hb[: n // 2] + adv[: n - n // 2]


def judge(prompts: list[str], replies: list[str]) -> dict:
    """Refusal rate, ASR and the coherence / topic checks of the non-refusals."""
    rows = [
        {"prompt": p, "reply": r, "refused": C.refused(r), "coherent": C.coherent(r), "on_topic": C.on_topic(p, r)}
        for p, r in zip(prompts, replies)
    ]
    ok = [r for r in rows if not r["refused"]]
    return {
        "n": len(rows),
        "refusal_rate": C.rate([r["refused"] for r in rows]),
        "asr": len(ok) / len(rows),
        "coherent_of_successes": C.rate([r["coherent"] for r in ok]),
        "on_topic_of_successes": C.rate([r["on_topic"] for r in ok]),
        "asr_coherent_on_topic": sum(r["coherent"] and r["on_topic"] for r in ok) / len(rows),
        "replies": rows,
    }


def strict_pick(sel) -> dict:
    """What Arditi's KL <= 0.1 rule keeps among the evaluated candidates, and its lowest-bypass candidate."""
    ok = ~sel.bypass.isnan() & (sel.kl <= 0.1)
    kept = ok & (sel.induce >= 0) & (torch.arange(sel.bypass.shape[1]) < int(sel.metadata["max_layer"]))
    out = {"n_kept": int(kept.sum()), "best_kl_ok": None}
    if ok.any():
        i, layer = divmod(
            int(torch.where(ok, sel.bypass, torch.tensor(float("inf"))).flatten().argmin()), sel.bypass.shape[1]
        )
        out["best_kl_ok"] = {
            "position": sel.positions[i],
            "layer": layer,
            "bypass": float(sel.bypass[i, layer]),
            "induce": float(sel.induce[i, layer]),
            "kl": float(sel.kl[i, layer]),
        }
    return out


def plot_rates(res: dict, path) -> None:
    """Bar chart: refusal rate per condition, with the coherent+on-topic share of harmful successes."""
    names = list(res)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = np.arange(len(names))
    ax.bar(x - 0.2, [res[k]["refusal_rate"] for k in names], 0.4, label="refusal rate")
    ax.bar(x + 0.2, [res[k]["asr_coherent_on_topic"] for k in names], 0.4, label="non-refusal, coherent, on topic")
    ax.set_xticks(x, [k.replace(" ", "\n", 1) for k in names], fontsize=7)
    ax.set(ylim=(0, 1.05), ylabel="fraction of prompts", title="Organism: refusal direction ablation / addition")
    ax.legend(fontsize=8)
    _save(fig, path)


def main() -> None:
    """Select, intervene, judge, write and print."""
    args = C.parse_args(__doc__, "arditi", 32, 6, extra)
    n_sel = 4 if args.quick else args.n_select
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model = C.setup()
    d = C.directions(model, args.n_train, args.cache)
    layers = C.layer_stride(args.layers)
    positions = [int(x) for x in args.positions.split(",")]
    harm_sel = harmful_train()[args.n_train : args.n_train + n_sel]
    harmless_sel = builtin_prompts("harmless", "val")[:n_sel]
    t = time.perf_counter()
    sel = select_refusal_direction(
        model,
        d,
        harm_sel,
        harmless_sel,
        positions=positions,
        layers=layers,
        kl_threshold=args.kl_threshold,
        batch_size=32,
        progress=False,
    )
    select_s = time.perf_counter() - t
    sel.save(args.out / "selection.safetensors")
    strict = strict_pick(sel)
    print(f"selection: {sel!r} ({len(layers) * len(positions)} candidates in {select_s:.0f} s)", flush=True)
    harmful, harmless = held_out_harmful(args.n), eval_prompts("harmless")[: args.n]

    def gen(prompts: list[str]) -> list[str]:
        return generate(model, prompts, max_new_tokens=args.max_new_tokens, batch_size=32, progress=False)

    res = {"harmful: baseline": judge(harmful, gen(harmful))}
    with ablate(model, sel.direction):
        res["harmful: ablation"] = judge(harmful, gen(harmful))
    with steer(model, sel.direction, sel.layer, -1.0):
        res["harmful: actadd -1"] = judge(harmful, gen(harmful))
    res["harmless: baseline"] = judge(harmless, gen(harmless))
    with steer(model, sel.direction, sel.layer, 1.0):
        res["harmless: actadd +1"] = judge(harmless, gen(harmless))
    rendered = chat_format(model).render_many(harmless)
    base_logits = last_token_logits(model, rendered)
    with ablate(model, sel.direction):
        kl = kl_last(base_logits, last_token_logits(model, rendered))
    args.out.mkdir(parents=True, exist_ok=True)
    plot_score_grids(
        {k: getattr(sel, k).numpy() for k in ("bypass", "induce", "kl")},
        sel.positions,
        list(range(int(model.cfg.n_layers))),
        args.out / "selection_scores.png",
        winner=(sel.positions.index(sel.position), sel.layer),
        discarded=sel.discarded.numpy(),
    )
    plot_rates(res, args.out / "rates.png")
    summary = {k: {m: v for m, v in r.items() if m != "replies"} for k, r in res.items()}
    out = {
        "selection": sel.to_json(),
        "strict_kl_0.1": strict,
        "selection_seconds": round(select_s, 1),
        "candidate_layers": layers,
        "candidate_positions": positions,
        "n_select": n_sel,
        "max_new_tokens": args.max_new_tokens,
        "kl_harmless_ablation": {"mean": float(kl.mean()), "max": float(kl.max()), "n": len(harmless)},
        "summary": summary,
        "conditions": res,
        "seconds": round(time.perf_counter() - start, 1),
    }
    C.write_json(args.out / "arditi.json", out)
    print(
        f"\nselected position {sel.position}, layer {sel.layer} (norm {float(sel.direction.norm()):.1f}), "
        f"bypass {out['selection']['bypass_score']:.2f} (baseline {out['selection']['baseline_harmful_mean']:.2f}), "
        f"induce {out['selection']['induce_score']:.2f}, KL {out['selection']['kl_score']:.3f}; "
        f"fallback={sel.fallback}"
    )
    print(
        f"{'condition':22s} {'n':>3s} {'refusal':>8s} {'ASR':>6s} {'coh|succ':>9s} {'topic|succ':>10s} "
        f"{'ASR coh+topic':>13s}"
    )
    for k, r in summary.items():
        print(
            f"{k:22s} {r['n']:3d} {r['refusal_rate']:8.2f} {r['asr']:6.2f} {r['coherent_of_successes']:9.2f} "
            f"{r['on_topic_of_successes']:10.2f} {r['asr_coherent_on_topic']:13.2f}"
        )
    print(
        f"KL(base || ablated) on {len(harmless)} harmless prompts, last token: mean {float(kl.mean()):.4f}, "
        f"max {float(kl.max()):.4f}"
    )
    print(
        f"with Arditi's KL <= 0.1: {strict['n_kept']} candidates kept; lowest-bypass candidate with KL <= 0.1: "
        f"{strict['best_kl_ok']}"
    )
    for k in ("harmful: ablation", "harmless: actadd +1"):
        print(f"\n--- {k}")
        for r in res[k]["replies"][: args.show]:
            print(f"  > {r['prompt'][:90]}\n    {r['reply'][:160]!r}")
    print(f"\nwrote {args.out}/arditi.json, selection_scores.png, rates.png in {C.elapsed(start)}")


if __name__ == "__main__":
    main()
