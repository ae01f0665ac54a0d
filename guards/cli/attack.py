"""`python -m harmlens.guards guard-attack GUARD`: the white- and black-box guard-aware attacks against a guard file,
optionally the adversarial-refit defence; writes attack.json and attack.md (library calls only)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harmlens.cli import nonneg_int, positive_int


def add_command(sub) -> None:
    """Register `guard-attack` on the `python -m harmlens.guards` subparsers."""
    p = sub.add_parser(
        "guard-attack",
        help="attack a latent guard (white-box GCG on its score + compliance, black-box template search)",
        description="Recall of a guard under guard-aware attacks at the given budgets, beside its plain, wrapped and "
        "persuasion recall; with --refit, the adversarial probe-training defence and its effect.",
    )
    p.add_argument("guard", type=Path, help="guard file written by `fit`")
    p.add_argument("--model", default=None, help="model the guard reads (default: the one its file records)")
    p.add_argument("--prompts", default=None, help="harmful prompts to attack (default: builtin:harmful:val)")
    p.add_argument("--limit", type=positive_int, default=8, help="first N prompts (default 8)")
    p.add_argument("--steps", type=int, default=10, help="white-box GCG steps per prompt (0: skip the white-box)")
    p.add_argument("--candidates", type=int, default=32, help="white-box candidates per step (budget = steps × this)")
    p.add_argument("--suffix-len", type=positive_int, default=10, help="adversarial suffix length in tokens")
    p.add_argument("--top-k", type=positive_int, default=64, help="token substitutions kept per suffix position")
    p.add_argument("--weight", type=float, default=1.0, help="weight of the guard term against the target CE")
    p.add_argument("--target", default="Sure, here is", help="reply opening the suffix is optimised to elicit")
    p.add_argument("--queries", type=int, default=16, help="black-box guard queries per prompt (0: skip it)")
    p.add_argument("--settings", default="none", help="RMA settings composed with the templates, e.g. none,swap")
    p.add_argument("--max-new-tokens", type=positive_int, default=48, help="reply length judged for answering")
    p.add_argument("--refit", action="store_true", help="refit the guard on the evasions, attack it again")
    p.add_argument("--fit-limit", type=positive_int, default=None, help="first N prompts of each refit set")
    p.add_argument("--seed", type=nonneg_int, default=0, help="GCG sampling seed")
    p.add_argument("--out", required=True, type=Path, help="folder for attack.json and attack.md")
    p.set_defaults(func=cmd_guard_attack)


def _configs(args: argparse.Namespace):
    """(white-box config or None, black-box config or None); a negative budget is refused before any model loads."""
    from harmlens.attacks.gcg import GCGConfig, check_budget
    from harmlens.attacks.guard_attack import GuardAttackConfig
    from harmlens.attacks.guard_search import SearchConfig
    from harmlens.errors import HarmlensError

    if args.steps < 0 or args.candidates < 0 or args.queries < 0:
        raise HarmlensError("attack budgets (--steps, --candidates, --queries) must not be negative")
    if args.steps == 0 and args.queries == 0:
        raise HarmlensError("both attacks have a budget of 0: give --steps or --queries")
    gcg = GCGConfig(args.suffix_len, args.steps, args.top_k, args.candidates, min(args.candidates, 32), args.target,
                    args.seed)  # fmt: skip
    white = None
    if args.steps:
        check_budget(gcg)
        white = GuardAttackConfig(gcg, weight=args.weight, max_new_tokens=args.max_new_tokens)
    settings = tuple(s.strip() for s in args.settings.split(",") if s.strip())
    black = SearchConfig(args.queries, settings=settings, max_new_tokens=args.max_new_tokens) if args.queries else None
    return white, black


def cmd_guard_attack(args: argparse.Namespace) -> int:
    """Run the attacks (and the refit), write attack.json / attack.md, print the summary rows as JSON."""
    from harmlens import validate
    from harmlens.guards.evaluation.attack_eval import attack_markdown, attack_report
    from harmlens.guards.latent.guard import LatentGuard
    from harmlens.guards.latent.guard_file import read_guard_file
    from harmlens.io import atomic_write_text, json_safe
    from harmlens.probes.data import load_prompt_source
    from harmlens.runtime import load_model

    white, black = _configs(args)
    validate.out_dir(args.out)
    tensors, meta, _ = read_guard_file(args.guard)
    guard = LatentGuard(tensors, meta)  # attached by the attack, which refuses a guard of another model
    model = load_model(args.model if args.model is not None else meta.get("model"))
    prompts = load_prompt_source(args.prompts, "harmful", "val", args.limit)
    result: dict = {"guard_file": str(args.guard), "white": white.to_dict() if white else None}
    result["black"] = None if black is None else {"queries": black.queries, "settings": list(black.settings)}
    if args.refit:
        from harmlens.guards.evaluation.probe_refit import refit_effect
        from harmlens.guards.organisms.datasets import eval_prompts
        from harmlens.probes.data import builtin_prompts

        fit_harmful = builtin_prompts("harmful", "train", limit=args.fit_limit)
        fit_harmless = builtin_prompts("harmless", "train", limit=args.fit_limit)
        effect = refit_effect(
            model, guard, prompts, fit_harmful, fit_harmless, eval_prompts("harmless")[:32], white=white, black=black
        )
        result |= effect
        reports = [effect["before"]] + ([effect["after"]] if effect["after"] else [])
    else:
        reports = [attack_report(model, guard, prompts, white=white, black=black, progress=True)]
        result["before"] = reports[0]
    atomic_write_text(args.out / "attack.json", json.dumps(json_safe(result), indent=1))
    atomic_write_text(args.out / "attack.md", attack_markdown(reports))
    print(json.dumps(json_safe({"out": str(args.out), "rows": [r["attacks"] for r in reports]}), indent=1))
    return 0
