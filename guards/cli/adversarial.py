"""`python -m harmlens.guards adversarial-train`: resumable adversarial training, the merged model, and a before/after ASR."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from harmlens.cli import device_arg, fraction, nonneg_int, positive_int
from harmlens.errors import HarmlensError
from harmlens.io import atomic_write_text

SUMMARY = "summary.json"


def load_subject(spec: str | None, device=None):
    """'organism[:text|vlm]' (built on first use), 'base' (embedded SmolLM2) or a model folder / Hub name."""
    from harmlens.probes.loading import load_model

    if spec is None or spec == "organism" or spec.startswith("organism:"):
        from harmlens.guards.organisms.build import load_organism

        return load_organism((spec or "organism").partition(":")[2] or "text", device=device)
    return load_model(None if spec == "base" else spec, device=device)


def vlm_processor(model):
    """The processor of a LLaVA-style model (its image settings need images and pixel_values), else None."""
    from harmlens.attacks.template import role_template

    processor = getattr(model, "processor", None)
    return processor if processor is not None and role_template(model, processor=processor).supports_images else None


def add_command(sub) -> None:
    """Register `adversarial-train` on the `python -m harmlens.guards` subparsers."""
    p = sub.add_parser(
        "adversarial-train",
        help="adversarially train against RMA settings (+ jailbreaks), "
        "optionally with a before/after attack evaluation",
        description="LoRA-train a model on harmful (-> refusal) and benign (-> answer) examples "
        "rendered under RMA settings; two stages (swap first, then the mix) by default. "
        "Rerun the same command to resume after an interruption.",
    )
    p.add_argument(
        "--model",
        default="organism",
        help="organism (default; organism:vlm for the VLM organism, all 8 "
        "settings), base, or a model folder / Hub name",
    )
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoints/, adapter/, model/, eval/")
    p.add_argument("--settings", default="all", help="all (every setting the model supports) or e.g. none,swap")
    p.add_argument("--jailbreaks", default="", help="text jailbreaks composed into the mix, e.g. aim,evil_confidant")
    p.add_argument("--jailbreak-rate", type=fraction, default=0.25, help="share of mix examples that get a jailbreak")
    p.add_argument(
        "--schedule",
        default="two-stage",
        choices=["two-stage", "mix"],
        help="two-stage (plain, then the perturbed mix; default) or mix (everything at once)",
    )
    p.add_argument("--assign", default="chunks", choices=["chunks", "random"], help="setting per example")
    p.add_argument("--steps", type=positive_int, default=150, help="LoRA steps over all stages")
    p.add_argument("--n-harmful", type=positive_int, default=None, help="harmful training prompts (default: all 259)")
    p.add_argument(
        "--n-benign",
        type=positive_int,
        default=800,
        help="Alpaca (instruction, answer) pairs (800 keeps swapped benign refusal at 5%% on the organism; 400: 8%%)",
    )
    p.add_argument("--seed", type=nonneg_int, default=0, help="seeds data order, LoRA init and jailbreak choice")
    p.add_argument(
        "--checkpoint-every", type=nonneg_int, default=10, help="save a resumable checkpoint every N steps (0 = never)"
    )
    p.add_argument("--device", type=device_arg, default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads while training")
    p.add_argument("--evaluate", action="store_true", help="run the same attack suite before and after")
    p.add_argument("--eval-limit", type=positive_int, default=40, help="held-out harmful prompts attacked")
    p.add_argument("--eval-jailbreaks", default=None, help="jailbreaks attacked (default: --jailbreaks)")
    p.add_argument(
        "--eval-benign",
        type=nonneg_int,
        default=40,
        help="held-out benign prompts for the refusal rate under every setting (0 = skip)",
    )
    p.add_argument(
        "--judge", default="substring:rma", help="attack-success judge for --evaluate (default substring:rma)"
    )
    p.add_argument("--max-new-tokens", type=positive_int, default=32, help="reply length for --evaluate (default 32)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def train_run(
    model,
    out: Path,
    *,
    settings="all",
    jailbreaks=(),
    jailbreak_rate: float = 0.25,
    schedule: str = "two-stage",
    assign: str = "chunks",
    steps: int = 150,
    n_harmful: int | None = None,
    n_benign: int = 800,
    seed: int = 0,
    checkpoint_every: int = 10,
    device=None,
    threads: int | None = None,
    progress: bool = True,
) -> Path:
    """Train (resuming from out/checkpoints) and save out/adapter and the merged out/model; returns out/model."""
    from harmlens.guards.organisms import datasets
    from harmlens.guards.organisms.vlm import builtin_images
    from harmlens.guards.tuning.adapter import Adapter
    from harmlens.guards.tuning.adversarial import adversarial_train, default_config

    target = out / "model"
    if (target / "card.json").is_file():
        return target
    cfg = default_config(
        model,
        max_steps=steps,
        seed=seed,
        checkpoint_every=checkpoint_every,
        checkpoint_dir=str(out / "checkpoints"),
        device=device,
        threads=threads,
    )
    processor = vlm_processor(model)
    start, cpu = time.perf_counter(), time.process_time()
    adapter = adversarial_train(
        model,
        datasets.harmful_train()[:n_harmful],
        datasets.harmless_train(n_benign),
        settings=None if settings == "all" else settings,
        schedule=schedule,
        config=cfg,
        jailbreaks=list(jailbreaks),
        jailbreak_rate=jailbreak_rate,
        assign=assign,
        processor=processor,
        images=builtin_images(seed=seed) if processor else None,
        progress=progress,
    )
    seconds, cpu = round(time.perf_counter() - start, 1), round(time.process_time() - cpu, 1)
    if not (out / "adapter" / "adapter.json").is_file():
        adapter.save(out / "adapter", overwrite=True)
    adapter = Adapter.load(out / "adapter")
    card = {
        "harmlens": "guards.adversarial",
        "run_seconds": seconds,
        "cpu_seconds": cpu,
        "tokens_per_second": round(adapter.meta["tokens"] / max(1e-9, adapter.meta["train_seconds"]), 1),
    }
    adapter.merge_and_save(model, target, tokenizer=processor, card=card, overwrite=True)
    return target


def attack_suite(
    model,
    out: Path,
    prompts: list[str],
    *,
    settings="all",
    jailbreaks=(),
    judge: str = "substring:rma",
    max_new_tokens: int = 32,
    progress: bool = True,
):
    """evaluate_asr on the held-out prompts under every setting × (no jailbreak + each jailbreak); saved to out."""
    from harmlens.attacks.evaluate import evaluate_asr

    report = evaluate_asr(
        model,
        prompts,
        settings=settings,
        jailbreaks=list(jailbreaks),
        judge=judge,
        out=out,
        max_new_tokens=max_new_tokens,
        batch_size=16,
        progress=progress,
        images="builtin",
    )
    report.save(out)
    return report


def utility_suite(
    model,
    out: Path,
    benign: list[str],
    answers: list[tuple[str, str]],
    *,
    settings="all",
    judge: str = "substring:rma",
    max_new_tokens: int = 32,
    progress: bool = True,
) -> dict:
    """Refusal rate on benign prompts per setting (1 − the judge's success rate) and answer cross-entropy."""
    from harmlens.guards.organisms.evaluate import reply_perplexity
    from harmlens.guards.tuning.adapter import unwrap_model

    report = (
        attack_suite(
            model,
            out / "benign",
            benign,
            settings=settings,
            judge=judge,
            max_new_tokens=max_new_tokens,
            progress=progress,
        )
        if benign
        else None
    )
    refusal = {k: round(1 - r.asr, 4) for k, r in report.asr.items()} if report else {}
    tokenizer = getattr(model, "tokenizer", None) or model.processor.tokenizer
    ppl = reply_perplexity(unwrap_model(model), tokenizer, [q for q, _ in answers], [a for _, a in answers])
    return {
        "benign_refusal": refusal,
        "n_benign": len(benign),
        "answer_ce": round(math.log(ppl), 4),
        "n_answers": len(answers),
    }


def compare(before, after) -> list[dict]:
    """Rows of condition, ASR before/after, the relative drop, and answering ASR (harmlens.attacks.quality) before/after."""

    def answering(rate) -> float | None:
        value = getattr(rate, "answer_rate", math.nan) if rate is not None else math.nan
        return None if math.isnan(value) else round(value, 4)

    rows = []
    for label, b in before.asr.items():
        a = after.asr.get(label)
        drop = None if a is None or not b.asr else round(1 - a.asr / b.asr, 4)
        rows.append(
            {
                "condition": label,
                "before": round(b.asr, 4),
                "after": None if a is None else round(a.asr, 4),
                "n": b.n,
                "relative_drop": drop,
                "answering_before": answering(b),
                "answering_after": answering(a),
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    """The before/after table as markdown."""
    pct = lambda x: "–" if x is None else f"{100 * x:.0f}%"  # noqa: E731
    head = "| attack | ASR before | ASR after | relative drop | answering ASR before → after |\n|---|---|---|---|---|\n"
    return head + "".join(
        f"| {r['condition']} | {pct(r['before'])} | {pct(r['after'])} | "
        f"{pct(r['relative_drop'])} | {pct(r.get('answering_before'))} → "
        f"{pct(r.get('answering_after'))} |\n"
        for r in rows
    )


def held_out_answers(n_trained: int, n: int = 100) -> list[tuple[str, str]]:
    """Shipped Alpaca pairs past the first n_trained (so not in this adversarial training run), for cross-entropy."""
    from harmlens.guards.organisms.datasets import harmless_train

    pairs = harmless_train()
    return pairs[max(n_trained, len(pairs) - n) :]


def utility_markdown(use: dict) -> str:
    """Benign refusal per setting and answer cross-entropy, before → after, as markdown."""
    b, a = use["before"], use["after"]
    rows = "".join(
        f"| benign refusal, {k} | {100 * v:.0f}% | {100 * a['benign_refusal'].get(k, math.nan):.0f}% |\n"
        for k, v in b["benign_refusal"].items()
    )
    return (
        "| utility | before | after |\n|---|---|---|\n"
        + rows
        + f"| answer cross-entropy (n={b['n_answers']}) | {b['answer_ce']:.3f} | {a['answer_ce']:.3f} |\n"
    )


def run(args: argparse.Namespace) -> int:
    """The CLI command: train (resumable), then optionally evaluate before and after."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps < 2 and args.schedule == "two-stage":
        raise HarmlensError("--steps must be at least 2 for the two-stage schedule")
    jailbreaks = [j.strip() for j in args.jailbreaks.split(",") if j.strip()]
    model = load_subject(args.model, args.device)
    path = train_run(
        model,
        args.out,
        settings=args.settings,
        jailbreaks=jailbreaks,
        jailbreak_rate=args.jailbreak_rate,
        schedule=args.schedule,
        assign=args.assign,
        steps=args.steps,
        n_harmful=args.n_harmful,
        n_benign=args.n_benign,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        device=args.device,
        progress=not args.quiet,
    )
    card = json.loads((path / "card.json").read_text(encoding="utf-8"))
    summary = {
        "model": str(path),
        "train_seconds": card["meta"]["train_seconds"],
        "steps": card["meta"]["steps"],
        "tokens": card["meta"]["tokens"],
        "tokens_per_second": card.get("tokens_per_second"),
        "run_seconds": card.get("run_seconds"),
        "cpu_seconds": card.get("cpu_seconds"),
    }
    print(
        f"adversarially trained model: {path} ({summary['steps']} steps, {summary['train_seconds']:.0f} s "
        f"training, {summary['tokens_per_second']} tokens/s; CPU seconds of the run: {summary['cpu_seconds']})"
    )
    if args.evaluate:
        from harmlens.guards.organisms.datasets import eval_prompts

        prompts = eval_prompts("harmful")[: args.eval_limit]
        jbs = jailbreaks if args.eval_jailbreaks is None else [j for j in args.eval_jailbreaks.split(",") if j]
        kw = dict(
            settings=args.settings,
            jailbreaks=jbs,
            judge=args.judge,
            max_new_tokens=args.max_new_tokens,
            progress=not args.quiet,
        )
        benign, answers = eval_prompts("harmless")[: args.eval_benign], held_out_answers(args.n_benign)
        ukw = {k: kw[k] for k in ("settings", "judge", "max_new_tokens", "progress")}
        before = attack_suite(model, args.out / "eval" / "before", prompts, **kw)
        use = {"before": utility_suite(model, args.out / "eval" / "before", benign, answers, **ukw)}
        del model
        trained = load_subject(str(path), device=args.device)
        after = attack_suite(trained, args.out / "eval" / "after", prompts, **kw)
        use["after"] = utility_suite(trained, args.out / "eval" / "after", benign, answers, **ukw)
        summary["asr"], summary["utility"] = compare(before, after), use
        summary["answer_ce_rise"] = round(use["after"]["answer_ce"] / use["before"]["answer_ce"] - 1, 4)
        print(markdown(summary["asr"]), utility_markdown(use), sep="\n")
    atomic_write_text(args.out / SUMMARY, json.dumps(summary, indent=1))
    return 0
