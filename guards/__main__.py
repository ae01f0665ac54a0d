"""Command line: `python -m harmlens.guards build-organism text [--out DIR] [--force]`, plus the latent-guard commands."""

from __future__ import annotations

import argparse
import json

from harmlens.cli import Parser, device_arg, exit_cli, run_cli


def _build_organism(args: argparse.Namespace) -> int:
    from harmlens.guards.organisms import build_organism, is_built, organism_path

    path = organism_path(args.kind) if args.out is None else args.out
    if is_built(path) and not args.force:
        print(f"the {args.kind} organism is already built: {path} (use --force to rebuild)")
        return 0
    path = build_organism(args.kind, out=args.out, force=args.force, device=args.device)
    card = json.loads((path / "card.json").read_text(encoding="utf-8"))
    ev = card.get("eval") or {}
    rates = ", ".join(f"{k} {v['refusal_rate']:.2f}" for k, v in ev.get("sets", {}).items())
    print(f"organism: {path}")
    print(
        f"build: {card['build_seconds']['total']:.0f} s ({card['training']['steps']} LoRA steps, "
        f"{card['training']['train_seconds']:.0f} s training)"
    )
    if rates:
        print(f"held-out refusal rate: {rates}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `python -m harmlens.guards` argument parser (one subparser per command)."""
    parser = Parser(
        prog="python -m harmlens.guards", description="harmlens guards: safety-tuned model organisms and latent guards."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    build = sub.add_parser(
        "build-organism",
        help="train, evaluate and cache an aligned model organism",
        description="LoRA safety-tune the embedded SmolLM2 into an aligned organism "
        "(about 10 minutes on 2 CPU cores), evaluate it, and cache it.",
    )
    build.add_argument(
        "kind",
        choices=["text", "vlm"],
        help="which organism: text, or vlm (LLaVA on the text organism's LM, ~10 min more)",
    )
    build.add_argument("--out", default=None, help="folder to write (default: the harmlens cache)")
    build.add_argument("--force", action="store_true", help="rebuild even if it is already built")
    build.add_argument("--device", type=device_arg, default=None, help="cpu or cuda (default: cuda when available)")
    build.set_defaults(func=_build_organism)
    from harmlens.guards.cli.guard import add_guard_commands  # latent guards: fit, check, eval

    add_guard_commands(sub)
    from harmlens.guards.cli.adversarial import add_command as add_adversarial  # adversarial-train

    add_adversarial(sub)
    from harmlens.guards.cli.main_job import add_command as add_main_job  # main: the whole pipeline on the organism

    add_main_job(sub)
    from harmlens.guards.cli.serve import add_command as add_serve  # serve: OpenAI-compatible guarded server

    add_serve(sub)
    from harmlens.guards.cli.attack import add_command as add_guard_attack  # guard-attack: guard-aware attacks

    add_guard_attack(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; HarmlensError is printed as a one-line error with exit status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return run_cli(lambda: args.func(args), interrupted="interrupted (a later build resumes from the last checkpoint)")


if __name__ == "__main__":
    exit_cli(main())
