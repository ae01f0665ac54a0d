"""CLI: `python -m harmlens.probes extract|select` — directions and Arditi selection as files and plots."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harmlens import validate
from harmlens.cli import Parser, exit_cli, parse_layers, parse_offsets, positive_int, run_cli, user_text
from harmlens.errors import HarmlensError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default=None, help="Hub name or local HF folder (default: the embedded SmolLM2-135M-Instruct)"
    )
    p.add_argument("--batch-size", type=positive_int, default=16, help="prompts per forward pass (default 16)")
    p.add_argument("--system", type=user_text, default=None, help="system prompt (default: the chat template's own)")
    p.add_argument(
        "--no-system", action="store_true", help="no system turn at all (not even the template's default one)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of `python -m harmlens.probes`."""
    parser = Parser(prog="python -m harmlens.probes", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser(
        "extract",
        help="harmfulness (t_inst) and refusal (t_post-inst) directions, per layer",
        description="Class-mean differences of the residual stream; writes directions.safetensors, "
        "summary.json and PNG plots. Prompt files: .json list, .jsonl, .csv or .txt; "
        "'builtin:harmful[:train|val]' uses the shipped sets (the default).",
    )
    _common(ex)
    ex.add_argument("--harmful", default=None, help="harmful prompt file (default: builtin:harmful:train)")
    ex.add_argument("--harmless", default=None, help="harmless prompt file (default: builtin:harmless:train)")
    ex.add_argument(
        "--out", required=True, type=Path, help="output folder; its files are replaced together, as one set"
    )
    ex.add_argument("--n", type=positive_int, default=128, help="prompts per class (default 128, as Arditi et al.)")
    ex.add_argument("--layers", default=None, help="layers to extract, e.g. '0-30' (default: all)")
    ex.add_argument("--val-harmful", default=None, help="prompts for the belief-score scatter (default: builtin val)")
    ex.add_argument("--val-harmless", default=None, help="same, harmless (default: builtin val)")
    sel = sub.add_parser(
        "select",
        help="Arditi bypass/induce/KL selection of one refusal direction",
        description="Scores every (post-instruction position, layer) candidate of a directions file.",
    )
    _common(sel)
    sel.add_argument("--directions", required=True, type=Path, help="directions.safetensors from `extract`")
    sel.add_argument("--harmful-val", default=None, help="default: builtin:harmful:val")
    sel.add_argument("--harmless-val", default=None, help="default: builtin:harmless:val")
    sel.add_argument(
        "--out",
        required=True,
        type=Path,
        help="selection file (.safetensors), or a folder to write selection.safetensors into",
    )
    sel.add_argument("--n", type=positive_int, default=32, help="validation prompts per class (default 32)")
    sel.add_argument("--positions", default=None, help="post-inst offsets to try, e.g. '-1,-2' (default: all)")
    sel.add_argument("--layers", default=None, help="layers to try (default: all below 0.8·L)")
    sel.add_argument(
        "--refusal-ids",
        default=None,
        help="refusal tokens: Arditi's for a family (llama2, llama3, qwen, gemma, yi) or comma-separated ids "
        "(default: first tokens of refusal openers)",
    )
    return parser


def cmd_extract(args: argparse.Namespace) -> dict:
    """Load the prompts and the model, then extract, save, score and plot (harmlens.probes.extraction)."""
    from harmlens.probes.data import load_prompt_source
    from harmlens.probes.extraction import extract_to_folder
    from harmlens.runtime import load_model

    validate.out_dir(args.out)
    layers = parse_layers(args.layers)
    harmful = load_prompt_source(args.harmful, "harmful", "train", args.n)
    harmless = load_prompt_source(args.harmless, "harmless", "train", args.n)
    val_h = load_prompt_source(args.val_harmful, "harmful", "val", 64)
    val_l = load_prompt_source(args.val_harmless, "harmless", "val", 64)
    return extract_to_folder(
        load_model(args.model),
        args.out,
        harmful,
        harmless,
        val_h,
        val_l,
        batch_size=args.batch_size,
        layers=layers,
        system=chosen_system(args),
        progress=not args.quiet,
    )


def chosen_system(args: argparse.Namespace):
    """--system TEXT, --no-system (NO_SYSTEM) or None (the template's default / the directions' own)."""
    from harmlens.runtime import NO_SYSTEM

    if args.no_system and args.system is not None:
        raise HarmlensError("--system and --no-system exclude each other")
    return NO_SYSTEM if args.no_system else args.system


def refusal_ids_arg(value: str | None) -> list[int] | str | None:
    """--refusal-ids: None, a family name for Arditi's ids, or comma-separated token ids."""
    if value is None or not value.replace(",", "").replace(" ", "").isdigit():
        return value
    return [int(x) for x in value.split(",") if x.strip()]


def cmd_select(args: argparse.Namespace) -> dict:
    """Run Arditi selection on a directions file and save the winner, the score grids and a plot."""
    from harmlens.probes.data import load_prompt_source
    from harmlens.probes.directions import Directions
    from harmlens.probes.selection import select_refusal_direction
    from harmlens.runtime import load_model

    out = args.out / "selection.safetensors" if args.out.is_dir() or not args.out.suffix else args.out
    validate.out_file(out, "selection file")
    positions, layers = parse_offsets(args.positions), parse_layers(args.layers)
    harmful_val = load_prompt_source(args.harmful_val, "harmful", "val", args.n)
    harmless_val = load_prompt_source(args.harmless_val, "harmless", "val", args.n)
    model = load_model(args.model)
    directions = Directions.load(args.directions, model=model)
    sel = select_refusal_direction(
        model,
        directions,
        harmful_val,
        harmless_val,
        batch_size=args.batch_size,
        positions=positions,
        layers=layers,
        system=chosen_system(args),
        refusal_ids=refusal_ids_arg(args.refusal_ids),
        progress=not args.quiet,
    )
    sel.save(out)
    return {"out": str(out), **sel.to_json()}


def main(argv: list[str] | None = None) -> int:
    """Entry point; bad input prints one line and exits 2."""
    args = build_parser().parse_args(argv)

    def run() -> int:
        result = {"extract": cmd_extract, "select": cmd_select}[args.command](args)
        print(json.dumps({k: v for k, v in result.items() if k != "cosine_per_layer"}, indent=2, default=str))
        return 0

    return run_cli(run, interrupted="interrupted: nothing half-written (outputs are written atomically)")


if __name__ == "__main__":
    exit_cli(main())
