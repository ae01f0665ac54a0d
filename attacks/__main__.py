"""CLI: `python -m harmlens.attacks run|gcg|list` — ASR under RMA settings × text jailbreaks, GCG suffixes, projections."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from harmlens import validate
from harmlens.cli import (
    Parser,
    add_generation_args,
    exit_cli,
    generation_fields,
    nonneg_int,
    parse_layers,
    positive_int,
    run_cli,
    user_text,
)
from harmlens.errors import HarmlensError

_MODEL_HELP = (
    "Hub name or local HF folder (default: the embedded SmolLM2-135M-Instruct); for an organism pass its "
    "cached folder, which `python -m harmlens.guards` prints (attacks never imports guards)"
)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help=_MODEL_HELP)
    p.add_argument(
        "--prompts",
        default=None,
        help="prompt file (.json/.jsonl/.csv/.txt) or builtin:harmful[:val] "
        "(default: builtin:harmful:val, not used to train the organisms)",
    )
    p.add_argument("--limit", type=positive_int, default=None, help="first N prompts only")
    p.add_argument("--out", required=True, type=Path, help="output folder (results stream to results.jsonl; resumable)")
    p.add_argument(
        "--judge",
        default="substring:rma",
        help="substring:jbb|rma|zhao, refusal_score (no generation), model:<known judge model> or "
        "<format>:<model>, e.g. strongreject:embedded (formats: python -m harmlens.attacks list)",
    )
    add_generation_args(p)
    p.add_argument("--system", type=user_text, default=None, help="system prompt (default: the chat template's own)")
    p.add_argument("--strip-system", action="store_true", help="drop the template's default system prompt (RMA)")


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of `python -m harmlens.attacks`."""
    parser = Parser(prog="python -m harmlens.attacks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="ASR of every requested setting × jailbreak; report.md, report.json, heatmaps",
        description="Settings: 'all' = every setting the model supports (2 for text-only, 8 for a "
        "VLM) or a comma list (none,swap,img_in,...). Jailbreaks: comma list of names, "
        "'all' (the 7 named ones), 'gptfuzzer' (77 templates) or gptfuzzer:<id>.",
    )
    _common(run)
    run.add_argument("--settings", default="all", help="'all' (every setting the model supports) or e.g. none,swap")
    run.add_argument("--jailbreaks", default="", help="e.g. aim,prefix_injection or all (default: none)")
    run.add_argument(
        "--backend",
        choices=("hf", "vllm"),
        default="hf",
        help="generation engine: hf (hooks apply) or vllm (pip install harmlens[vllm]; same prompts as token ids)",
    )
    run.add_argument(
        "--images",
        default="builtin",
        help="image path for the image settings of a VLM (default: builtin, one seeded synthetic image)",
    )
    run.add_argument(
        "--directions",
        type=Path,
        default=None,
        help="directions.safetensors (python -m harmlens.probes extract) for the refusal-projection analysis",
    )
    run.add_argument(
        "--band", default=None, help="layer band for the projection, e.g. '12-15' (default: RMA's, scaled)"
    )
    run.add_argument(
        "--ablate-layer",
        type=nonneg_int,
        default=None,
        help="directional-ablation condition: ablate the --directions refusal direction of this layer (hooks on "
        "hf; on vllm the model orthogonalised against it, saved as an HF folder)",
    )
    gcg = sub.add_parser("gcg", help="GCG suffix per prompt, then their ASR with and without role swap")
    _common(gcg)
    gcg.add_argument("--steps", type=positive_int, default=40, help="GCG optimisation steps per prompt (default 40)")
    gcg.add_argument("--suffix-len", type=positive_int, default=10, help="adversarial suffix length in tokens")
    gcg.add_argument("--top-k", type=positive_int, default=64, help="token substitutions kept per suffix position")
    gcg.add_argument("--candidates", type=positive_int, default=64, help="candidate suffixes scored per step")
    gcg.add_argument("--target", default="Sure, here is", help="reply opening the suffix is optimised to elicit")
    sub.add_parser("list", help="the settings, jailbreaks and judges")
    return parser


def _setup(args):
    from harmlens.probes.data import load_prompt_source
    from harmlens.runtime import load_model

    validate.out_dir(args.out)
    if getattr(args, "band", None):
        parse_layers(args.band)
    prompts = load_prompt_source(args.prompts, "harmful", "val", args.limit)
    return load_model(args.model), prompts


def _evaluate(args, model, prompts, settings, jailbreaks, images=None, processor=None, ablation=None):
    from harmlens.attacks.runs import attack_to_folder
    from harmlens.runtime import GenerationConfig

    return attack_to_folder(
        model,
        prompts,
        args.out,
        settings=settings,
        jailbreaks=jailbreaks,
        judge=args.judge,
        images=images,
        config=GenerationConfig(**generation_fields(args)),
        system=args.system,
        strip_system=args.strip_system,
        processor=processor,
        backend=getattr(args, "backend", "hf"),
        ablation=ablation,
    )


def cmd_run(args: argparse.Namespace) -> dict:
    """Evaluate, save the report and, with --directions, the projection analysis."""
    if args.backend == "vllm":
        from harmlens.runtime import INSTALL_HINT, vllm_available

        if not vllm_available():  # before the model loads
            raise HarmlensError(INSTALL_HINT)
    if args.ablate_layer is not None and args.directions is None:
        raise HarmlensError("--ablate-layer needs --directions (the directions.safetensors to take it from)")
    from harmlens.attacks.runs import model_processor, projection_to_folder
    from harmlens.probes.directions import Directions

    model, prompts = _setup(args)
    directions = Directions.load(args.directions, model=model) if args.directions is not None else None
    ablation = None
    if directions is not None and args.ablate_layer is not None:
        ablation = directions.refusal[directions.row(args.ablate_layer)]
    jailbreaks = [j for j in args.jailbreaks.split(",") if j.strip()]
    processor = model_processor(model, args.model)
    report = _evaluate(args, model, prompts, args.settings, jailbreaks, args.images, processor, ablation)
    result = {
        "out": str(args.out),
        "backend": args.backend,
        "ablate_layer": args.ablate_layer,
        "asr": {k: round(v.asr, 4) for k, v in report.asr.items()},
    }
    if directions is not None:
        proj = projection_to_folder(
            model,
            report,
            directions,
            args.out,
            band=parse_layers(args.band),
            batch_size=args.batch_size,
            progress=not args.quiet,
        )
        result["projection_band_cos"] = dict(proj.ranking())
    return result


def cmd_gcg(args: argparse.Namespace) -> dict:
    """GCG suffixes, saved to gcg.json, then evaluated under none and swap."""
    from harmlens.attacks.gcg import GCGConfig, gcg_jailbreak, gcg_many
    from harmlens.io import atomic_write_text

    model, prompts = _setup(args)
    cfg = GCGConfig(
        suffix_len=args.suffix_len,
        steps=args.steps,
        top_k=args.top_k,
        batch=args.candidates,
        target=args.target,
        seed=args.seed,
    )
    results = gcg_many(model, prompts, cfg, progress=not args.quiet)
    seconds = sum(r.seconds for r in results)
    atomic_write_text(
        args.out / "gcg.json",
        json.dumps({"config": asdict(cfg), "seconds": seconds, "results": [asdict(r) for r in results]}, indent=1),
    )
    report = _evaluate(args, model, prompts, ["none", "swap"], [gcg_jailbreak(results)])
    return {
        "out": str(args.out),
        "gcg_seconds": round(seconds, 1),
        "asr": {k: round(v.asr, 4) for k, v in report.asr.items()},
    }


def cmd_list(args: argparse.Namespace) -> dict:
    """Names a user can pass."""
    from harmlens.attacks.jailbreaks import NAMED, gptfuzzer_templates
    from harmlens.attacks.settings import SETTINGS

    return {
        "settings": {
            s.name: f"image {s.image}, {'swapped' if s.swap else 'roles as is'} ({s.paper!r})" for s in SETTINGS
        },
        "jailbreaks": {
            **{k: v.description for k, v in NAMED.items()},
            "gptfuzzer:<id>": f"{len(gptfuzzer_templates())} GPTFuzzer templates",
        },
        "judges": [
            "substring:jbb",
            "substring:rma",
            "substring:zhao",
            "refusal_score",
            "model:<known judge>",
            "<format>:<model> (strongreject, jbb-jailbreak, jbb-refusal, harmbench, llamaguard3, llamaguard4, ask)",
        ],
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point; bad input prints one line and exits 2."""
    args = build_parser().parse_args(argv)

    def run() -> int:
        result = {"run": cmd_run, "gcg": cmd_gcg, "list": cmd_list}[args.command](args)
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0

    return run_cli(
        run, interrupted="interrupted: finished items are in results.jsonl; rerun the same command to resume"
    )


if __name__ == "__main__":
    exit_cli(main())
