"""`python -m harmlens.guards adversarial-train`: parse the flags into an AdversarialRun and run it (guards.pipeline)."""

from __future__ import annotations

import argparse
from pathlib import Path

from harmlens.cli import add_generation_args, device_arg, fraction, generation_fields, nonneg_int, positive_int
from harmlens.guards.pipeline.settings import EVAL_GENERATION
from harmlens.runtime import BACKENDS


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
    add_generation_args(
        p,
        max_new_tokens=EVAL_GENERATION.max_new_tokens,
        batch_size=EVAL_GENERATION.batch_size,
        batch_flag="--eval-batch-size",
        sampling=False,
        quiet=False,
        what="for --evaluate",
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="hf",
        help="generation for --evaluate: hf, vllm, or auto (vllm when installed; default hf)",
    )
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bfloat16 autocast while training (default: where the device has native bfloat16; --no-bf16: float32)",
    )
    p.add_argument(
        "--before-results",
        default=None,
        help="results.jsonl of an earlier attack on the same model, prompts, judge and reply length: the 'before' "
        "table resumes from it instead of attacking again",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _names(text: str) -> tuple[str, ...]:
    return tuple(j.strip() for j in text.split(",") if j.strip())


def run(args: argparse.Namespace) -> int:
    """The CLI command: train (resumable), then optionally evaluate before and after."""
    from harmlens.guards.pipeline.adversarial_run import AdversarialRun, run_adversarial
    from harmlens.runtime import GenerationConfig

    settings = AdversarialRun(
        model=args.model,
        settings=args.settings,
        jailbreaks=_names(args.jailbreaks),
        jailbreak_rate=args.jailbreak_rate,
        schedule=args.schedule,
        assign=args.assign,
        steps=args.steps,
        n_harmful=args.n_harmful,
        n_benign=args.n_benign,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        device=args.device,
        threads=args.threads,
        evaluate=args.evaluate,
        eval_limit=args.eval_limit,
        eval_jailbreaks=None if args.eval_jailbreaks is None else _names(args.eval_jailbreaks),
        eval_benign=args.eval_benign,
        judge=args.judge,
        generation=GenerationConfig(**generation_fields(args)),
        progress=not args.quiet,
        backend=args.backend,
        bf16=args.bf16,
        before_results=args.before_results,
    )
    run_adversarial(args.out, settings)
    return 0
