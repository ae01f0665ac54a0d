"""The main job, `python -m harmlens.guards main`: organism → directions → attacks → Latent Guard → adversarial training.

Parses the flags into a MainJobSettings and calls harmlens.guards.pipeline.run_main_job; a step whose step.json
already exists is skipped, so an interrupted job resumes where it stopped. The last lines printed are the tables.
"""

from __future__ import annotations

import argparse

from harmlens.cli import add_generation_args, device_arg, generation_fields, positive_int
from harmlens.guards.pipeline.settings import EVAL_JAILBREAKS, JOB_GENERATION, STEPS, MainJobSettings
from harmlens.runtime import BACKENDS, GenerationConfig

__all__ = ["STEPS", "add_command", "run"]


def _names(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def run(args: argparse.Namespace) -> int:
    """The CLI command: settings from the flags, then the job."""
    from harmlens.guards.pipeline.job import run_main_job

    settings = MainJobSettings(
        n=args.n,
        jailbreaks=_names(args.jailbreaks),
        steps=_names(args.steps),
        device=args.device,
        model=args.model,
        n_directions=args.n_directions,
        backend=args.backend,
        generation=GenerationConfig(**generation_fields(args, progress=False)),
    )
    run_main_job(args.out, settings)
    return 0


def add_command(sub) -> None:
    """Register `main` on the guards CLI."""
    p = sub.add_parser(
        "main",
        help="the main job: organism, directions, attack table, guard, adversarial training",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--out", default="runs/main", help="output folder (default runs/main; reruns resume)")
    p.add_argument(
        "--n", type=positive_int, default=32, help="held-out harmful/harmless prompts per evaluation (default 32)"
    )
    p.add_argument(
        "--jailbreaks",
        default=",".join(EVAL_JAILBREAKS),
        help="text jailbreaks for the attack table, composed with each setting (default: the two strongest "
        "on the organism; 'all' = the 7 named)",
    )
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma list of steps (default: {','.join(STEPS)})")
    p.add_argument("--device", type=device_arg, default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--model",
        default="organism",
        help="what the steps after 'organism' read (default: the text organism; base = the embedded SmolLM2, "
        "or a model folder / Hub name)",
    )
    p.add_argument(
        "--n-directions",
        type=positive_int,
        default=128,
        help="training prompts per class for the directions (default 128)",
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="generation of the attack and before/after tables: hf, vllm, or auto (default: vllm when installed; "
        "image prompts always on hf)",
    )
    add_generation_args(
        p,
        max_new_tokens=JOB_GENERATION.max_new_tokens,
        batch_size=JOB_GENERATION.batch_size,
        sampling=False,
        quiet=False,
        what="of the attack table and the adversarial step's before/after tables",
    )
    p.set_defaults(func=run)
