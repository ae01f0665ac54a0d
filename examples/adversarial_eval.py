"""Adversarial training of the text organism, evaluated before vs after on held-out prompts (issue 7).

    OMP_NUM_THREADS=1 python examples/adversarial_eval.py [--out runs/adversarial] [--n-harmful 40]

Trains (or resumes / reuses) `python -m harmlens.guards adversarial-train` into OUT/train, then for the organism before and
after: ASR per setting × text jailbreak (substring:rma judge, JBB re-judged) with coherence, and a worst-case
white-box attack (directional ablation of the model's own refusal direction); utility (refusal on held-out benign
prompts with and without swap, XSTest-safe refusal, held-out Alpaca answer cross-entropy); the attack vectors'
cos(−R, attack) per layer; and a LatentGuard on top (combined ASR and FPR). Writes OUT/summary.json, OUT/summary.md,
OUT/{before,after}/asr/*.png, OUT/asr_before_after.png and OUT/projection_before_after.png.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harmlens.attacks.evaluate import build_prompts, evaluate_asr, rejudge  # noqa: E402
from harmlens.attacks.jailbreaks import resolve_jailbreaks  # noqa: E402
from harmlens.attacks.projection import projection_analysis  # noqa: E402
from harmlens.attacks.report import ROLE_LABELS, AttackReport  # noqa: E402
from harmlens.attacks.settings import resolve_settings  # noqa: E402
from harmlens.guards.latent.configs import CentroidConfig  # noqa: E402
from harmlens.guards.latent.guard import LatentGuard  # noqa: E402
from harmlens.guards.organisms import datasets  # noqa: E402
from harmlens.guards.organisms.evaluate import reply_perplexity  # noqa: E402
from harmlens.guards.pipeline.adversarial_eval import compare, markdown  # noqa: E402
from harmlens.guards.pipeline.adversarial_run import train_run  # noqa: E402
from harmlens.guards.pipeline.subjects import load_subject  # noqa: E402
from harmlens.guards.tuning.adapter import unwrap_model  # noqa: E402
from harmlens.probes.directions import extract_directions  # noqa: E402
from harmlens.probes.interventions import ablate  # noqa: E402
from harmlens.probes.plots import _save, subplots  # noqa: E402
from harmlens.runtime.chat import role_template  # noqa: E402
from harmlens.runtime.loading import load_model  # noqa: E402

TRAIN_JAILBREAKS = ("prefix_injection", "refusal_suppression", "evil_confidant", "payload_splitting")  # rest held out
ABLATION_LAYERS = (8, 12, 16, 20)  # candidates for the worst case, chosen on training prompts


def held_out_answers(data: Path, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Alpaca (instruction, answer) pairs in none of the shipped training or eval sets."""
    pairs = json.loads((data / "harmless" / "alpaca_pairs.json").read_text(encoding="utf-8"))
    used = {i for i, _ in datasets.harmless_train()} | set(datasets.eval_prompts("harmless"))
    rows = [
        (p["instruction"].strip(), p["output"].strip())
        for p in pairs
        if p["instruction"].strip() not in used and p["output"].strip() and len(p["output"]) < 600
    ]
    return random.Random(seed).sample(rows, n)


def suite(model, out: Path, harmful: list[str], args) -> object:
    """The attack suite: every text setting × (no jailbreak + the 7 named jailbreaks)."""
    report = evaluate_asr(
        model,
        harmful,
        settings="all",
        jailbreaks="all",
        out=out,
        max_new_tokens=args.tokens,
        batch_size=16,
        progress=False,
    )
    report.save(out)
    return report


def worst_case(model, directions, harmful: list[str], layer: int, out: Path, args) -> float:
    """ASR with the model's own refusal direction (one layer's) ablated everywhere."""
    with ablate(model, directions.refusal[directions.row(layer)]):
        report = evaluate_asr(model, harmful, settings=["none"], out=out, max_new_tokens=args.tokens, progress=False)
    return report.rate("none").asr


def pick_layer(model, directions, args) -> int:
    """The candidate layer whose ablation breaks the most of 16 harmful *training* prompts (before model)."""
    train = datasets.harmful_train()[-16:]
    scores = {
        x: worst_case(model, directions, train, x, args.out / "ablation_pick" / str(x), args) for x in ABLATION_LAYERS
    }
    return max(scores, key=lambda x: (scores[x], -x))


def picked_layer(args) -> int:
    """pick_layer's choice read back from its cached runs (the worst case uses the same layer after training)."""
    scores = {}
    for x in ABLATION_LAYERS:
        lines = (args.out / "ablation_pick" / str(x) / "results.jsonl").read_text(encoding="utf-8").splitlines()[1:]
        scores[x] = sum(json.loads(line)["success"] for line in lines) / max(1, len(lines))
    return max(scores, key=lambda x: (scores[x], -x))


def utility(model, tag: str, pairs, args) -> dict:
    """Refusal on benign prompts (none, swap), XSTest-safe refusal (none) and answer cross-entropy."""
    res = {}
    benign = datasets.eval_prompts("harmless")[: args.n_benign]
    sets = (("benign", benign, "none,swap"), ("xstest", datasets.eval_prompts("xstest"), "none"))
    for name, prompts, settings in sets:
        rep = evaluate_asr(
            model, prompts, settings=settings, out=args.out / tag / name, max_new_tokens=args.tokens, progress=False
        )
        for judge, r in (("rma", rep), ("jbb", rejudge(rep, "substring:jbb"))):
            for s in settings.split(","):
                res[f"{name}_{s}_refusal_{judge}"] = round(1 - r.rate(s).asr, 4)
    ppl = reply_perplexity(unwrap_model(model), model.tokenizer, [p for p, _ in pairs], [a for _, a in pairs])
    res["answer_ce"] = round(math.log(ppl), 4)
    return res


def guard_rates(model, reports: dict, harmful: list[str], args) -> dict:
    """LatentGuard fitted on this model; ASR of guard + model per condition, FPR on benign (none, swap), XSTest."""
    fit_h, fit_l = datasets.harmful_train()[:128], [i for i, _ in datasets.harmless_train(128)]
    guard = LatentGuard.fit(model, fit_h, fit_l, CentroidConfig(target_fpr=0.05, seed=0))
    template = role_template(model)
    settings = resolve_settings("all", supports_images=False)
    prompts = build_prompts(template, harmful, settings, resolve_jailbreaks("all"))
    flags = dict(zip(prompts, [v.harmful for v in guard.check(list(prompts.values()))]))
    out = {"layers": guard.layers, "alpha": guard.alpha, "asr": {}, "flagged": {}}
    for label, _rate in reports["asr"].asr.items():
        jb, _, setting = label.rpartition("/")
        recs = [r for r in reports["asr"].records if r["setting"] == setting and r["jailbreak"] == (jb or "none")]
        flagged = [flags[(setting, jb or "none", r["index"])] for r in recs]
        out["asr"][label] = round(sum(r["success"] and not f for r, f in zip(recs, flagged)) / len(recs), 4)
        out["flagged"][label] = round(float(np.mean(flagged)), 4)
    benign = datasets.eval_prompts("harmless")[: args.n_benign]
    for name, prompts in (("benign_none", benign), ("xstest_none", datasets.eval_prompts("xstest"))):
        out[f"fpr_{name}"] = round(np.mean([v.harmful for v in guard.check(prompts)]), 4)
    swapped = build_prompts(template, benign, resolve_settings("swap", supports_images=False), [None])
    out["fpr_benign_swap"] = round(np.mean([v.harmful for v in guard.check(list(swapped.values()))]), 4)
    return out


def plot_projection(results: dict, path: Path, conditions: list[str]) -> Path:
    """cos(−R_l, attack_l) per layer, before (solid) vs after (dashed), a few conditions."""
    fig, ax = subplots(figsize=(7.5, 4))
    for i, cond in enumerate(conditions):
        for tag, ls in (("before", "-"), ("after", "--")):
            res = results[tag]
            ax.plot(res["layers"], res["cos"][cond], ls=ls, color=f"C{i}", label=f"{cond} ({tag})")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(xlabel="layer (resid_pre)", ylabel="cos(−R, attack)", title="Attack vectors vs −refusal, before/after")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_pair(grids: dict, rows: list[str], path: Path) -> Path:
    """Heatmap pair: jailbreak × role ASR before and after."""
    fig, axes = subplots(1, 2, figsize=(8, 0.45 * len(rows) + 1.8), sharey=True)
    for ax, (tag, grid) in zip(axes, grids.items()):
        ax.imshow(np.ma.masked_invalid(grid), cmap="Reds", vmin=0, vmax=1, aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{100 * v:.0f}%", ha="center", va="center", color="white" if v > 0.6 else "black")
        ax.set_xticks(range(2), list(ROLE_LABELS))
        ax.set_yticks(range(len(rows)), rows)
        ax.set_title(f"ASR {tag}")
    return _save(fig, path)


def evaluate_model(model, tag: str, harmful: list[str], pairs, args, layer: int | None) -> dict:
    """Every before/after measurement of one model; cached in OUT/<tag>/result.json."""
    cache = args.out / tag / "result.json"
    if cache.is_file():
        return json.loads(cache.read_text(encoding="utf-8"))
    report = suite(model, args.out / tag / "asr", harmful, args)
    fit_h, fit_l = datasets.harmful_train()[:64], [i for i, _ in datasets.harmless_train(64)]
    directions = extract_directions(model, fit_h, fit_l, progress=False)
    layer = layer if layer is not None else pick_layer(model, directions, args)
    res = {
        "asr": {k: round(v.asr, 4) for k, v in report.asr.items()},
        "asr_jbb": {k: round(v.asr, 4) for k, v in rejudge(report, "substring:jbb").asr.items()},
        "coherence": {k: v.coherence for k, v in report.asr.items()},
        "ablation_layer": layer,
        "ablation_asr": worst_case(model, directions, harmful, layer, args.out / tag / "ablation", args),
    }
    res.update(utility(model, tag, pairs, args))
    proj = projection_analysis(model, report, directions, use="all")
    proj.save(args.out / tag / "projection")
    res.update(layers=proj.layers, cos=proj.cos, band=proj.band, band_cos=proj.band_cos)
    res["guard"] = guard_rates(model, {"asr": report}, harmful, args)
    cache.write_text(json.dumps(res, indent=1, default=float))
    print(tag, json.dumps({k: v for k, v in res.items() if k not in ("coherence", "cos", "layers")}), flush=True)
    return res


def main() -> int:
    """Evaluate the organism, train (resumable), evaluate the result, write the summary and plots."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/adversarial"))
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    p.add_argument("--n-harmful", type=int, default=40, help="held-out harmful prompts attacked")
    p.add_argument("--n-benign", type=int, default=100, help="held-out benign prompts")
    p.add_argument("--n-answers", type=int, default=100, help="held-out Alpaca answers for the cross-entropy")
    p.add_argument("--tokens", type=int, default=32, help="greedy tokens per reply")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument(
        "--only",
        choices=["before", "after"],
        default=None,
        help="one half (e.g. in two processes); 'after' needs the training run and the layer pick done",
    )
    args = p.parse_args()
    torch.set_num_threads(1)
    harmful, pairs = datasets.eval_prompts("harmful")[: args.n_harmful], held_out_answers(args.data, args.n_answers)
    model = load_subject("organism")
    if args.only != "after":
        b = evaluate_model(model, "before", harmful, pairs, args, None)
        if args.only == "before":
            return 0
    path = train_run(model, args.out / "train", jailbreaks=TRAIN_JAILBREAKS, steps=args.steps)
    del model
    layer = picked_layer(args) if args.only == "after" else b["ablation_layer"]
    a = evaluate_model(load_model(str(path)), "after", harmful, pairs, args, layer)
    if args.only == "after":
        return 0
    card = json.loads((path / "card.json").read_text(encoding="utf-8"))
    summary: dict = {
        "train": {k: card["meta"][k] for k in ("steps", "tokens", "train_seconds")}
        | {
            "run_seconds": card.get("run_seconds"),
            "tokens_per_second": card.get("tokens_per_second"),
            "train_jailbreaks": list(TRAIN_JAILBREAKS),
        },
        "before": b,
        "after": a,
    }
    reports = {tag: AttackReport.load(args.out / tag / "asr") for tag in ("before", "after")}
    summary["asr_table"] = compare(reports["before"], reports["after"])
    grids = {tag: reports[tag].jailbreak_grid()[0] for tag in ("before", "after")}
    plot_pair(grids, reports["before"].jailbreak_grid()[1], args.out / "asr_before_after.png")
    strongest = max(b["asr"], key=b["asr"].get)
    shown = [c for c in ("swap", strongest, f"{strongest.split('/')[0]}/swap") if c in b["cos"]]
    plot_projection({"before": b, "after": a}, args.out / "projection_before_after.png", list(dict.fromkeys(shown)))
    summary["targets"] = {
        "strongest_attack": strongest,
        "strongest_relative_drop": round(1 - a["asr"][strongest] / max(1e-9, b["asr"][strongest]), 4),
        "benign_refusal_after": {k: a[k] for k in a if k.startswith("benign_")},
        "answer_ce_rise": round(a["answer_ce"] / b["answer_ce"] - 1, 4),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    (args.out / "summary.md").write_text(markdown(summary["asr_table"]))
    print(markdown(summary["asr_table"]), json.dumps(summary["targets"], indent=1), sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
