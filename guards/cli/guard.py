"""`python -m harmlens.guards fit|check|eval`: fit a LatentGuard, stream JSON verdicts, evaluate it against baselines."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from harmlens import validate
from harmlens.cli import Parser, exit_cli, fraction, nonneg_int, parse_layers, positive_int, run_cli, user_text
from harmlens.errors import HarmlensError
from harmlens.guards.latent.input_policy import DEFAULT_MAX_TOKENS

_MODEL_HELP = "Hub name or local HF folder (default for check/eval: the model recorded in the guard file)"


def add_guard_commands(subparsers) -> None:
    """Add the fit, check and eval subcommands to an argparse subparsers object."""
    fit = subparsers.add_parser("fit", help="fit a latent guard on harmful/harmless prompts and save it")
    fit.add_argument("--model", default=None, help="model to read (default: the embedded SmolLM2-135M-Instruct)")
    fit.add_argument(
        "--harmful",
        default=None,
        help="prompt file (.json/.jsonl/.csv/.txt) or builtin:harmful[:split] (default: builtin:harmful:train)",
    )
    fit.add_argument("--harmless", default=None, help="same, default builtin:harmless:train")
    fit.add_argument("--val-harmful", default=None, help="held-out harmful prompts for layer choice / calibration")
    fit.add_argument("--val-harmless", default=None, help="held-out harmless prompts (default: 25%% of the fit sets)")
    fit.add_argument(
        "--method",
        choices=["centroid", "probe"],
        default=None,
        help="centroid (default for --read t_inst) or probe (the only one for --read span); without --method, "
        "--read and --variant: the dual guard (t_inst centroid + span MLP, calibrated at 5%% FPR)",
    )
    fit.add_argument(
        "--read",
        choices=["t_inst", "span"],
        default=None,
        help="t_inst (Zhao's rule) or span: a token probe read at every token up to t_inst, the top "
        "token deciding, fitted on the prompts also wrapped in jailbreaks; catches wrappers that "
        "end in constant text",
    )
    fit.add_argument(
        "--token-probe",
        choices=["mlp", "linear"],
        default="mlp",
        help="--read span: one small MLP over the layers (default) or a logistic probe per layer (plus "
        "a t_inst probe, the larger scaled part deciding)",
    )
    fit.add_argument(
        "--wrappers",
        default="default",
        help="--read span: jailbreaks the fit wraps prompts in, comma list, groups split by ';' "
        "(default: four named + half of GPTFuzzer's templates; 'none': plain prompts only)",
    )
    fit.add_argument("--layers", default=None, help="e.g. '10-20' (default: chosen on held-out data)")
    fit.add_argument(
        "--target-fpr",
        type=fraction,
        default=None,
        help="calibrate alpha: expected FPR on new harmless prompts at most this (conformal; default: 0.05 for the "
        "dual guard, uncalibrated for the others)",
    )
    fit.add_argument(
        "--variant",
        default=None,
        help="guard variant (dual: the default; centroid, probe, span-linear, span-mlp); overrides "
        "--method/--read/--token-probe",
    )
    fit.add_argument(
        "--seed", type=nonneg_int, default=0, help="seed of the held-out split and the span fit's sampling"
    )
    fit.add_argument("--val-fraction", type=fraction, default=0.25, help="share of each set held out (no --val-* sets)")
    fit.add_argument("--system", type=user_text, default=None, help="system prompt the guard renders prompts with")
    fit.add_argument("--limit", type=positive_int, default=None, help="first N prompts of each fit set")
    fit.add_argument("--no-balance", action="store_true", help="do not balance the instructions' final punctuation")
    fit.add_argument("--out", required=True, type=Path, help="guard file to write (.safetensors)")
    fit.set_defaults(func=cmd_fit)
    check = subparsers.add_parser("check", help="one JSON verdict per input line (file or stdin)")
    check.add_argument("guard", type=Path, help="guard file written by `fit`")
    check.add_argument("--prompts", default="-", help="text file, one prompt per line ('-' = stdin, the default)")
    check.add_argument("--model", default=None, help=_MODEL_HELP)
    check.add_argument("--batch-size", type=positive_int, default=16, help="prompts per forward pass (default 16)")
    check.add_argument("--fail-open", action="store_true", help="errors give harmful=false instead of true")
    check.add_argument(
        "--max-tokens",
        type=positive_int,
        default=DEFAULT_MAX_TOKENS,
        help=f"longest prompt read, in tokens with the template (default {DEFAULT_MAX_TOKENS}); see --on-long",
    )
    check.add_argument(
        "--on-long",
        choices=["truncate", "reject"],
        default="truncate",
        help="over --max-tokens: keep the prompt's end (truncated: true, the default) or fail it closed",
    )
    check.add_argument(
        "--on-injection",
        choices=["flag", "report"],
        default="flag",
        help="role markers in a prompt (injection: true): also flag it harmful (default) or only report them",
    )
    check.set_defaults(func=cmd_check)
    ev = subparsers.add_parser("eval", help="evaluate a guard and the baselines on prompt sets; JSON, markdown, ROC")
    ev.add_argument("guard", type=Path, help="guard file written by `fit`")
    ev.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=PATH:harmful|harmless",
        help="an evaluation set (repeatable); default: the held-out sets shipped in guards/data",
    )
    ev.add_argument("--model", default=None, help=_MODEL_HELP)
    ev.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="NAME=GUARD",
        help="another guard file of the same model, scored side by side (repeatable); the shipped "
        "jailbreak sets then leave out every compared guard's fit wrappers",
    )
    ev.add_argument(
        "--baselines",
        default="keyword,perplexity,delta_refuse,behaviour",
        help="comma list of keyword, perplexity, delta_refuse, behaviour ('' = none)",
    )
    ev.add_argument(
        "--calibrate",
        default=None,
        help="harmless prompts to calibrate the perplexity threshold at 5%% FPR (default: NeMo's fixed threshold)",
    )
    ev.add_argument("--limit", type=positive_int, default=None, help="first N prompts of each set")
    ev.add_argument("--out", required=True, type=Path, help="folder for report.json, report.md, roc.png")
    ev.set_defaults(func=cmd_eval)


def _load(args):
    """The guard file, checked before its model is loaded (a malformed file is refused at once)."""
    from harmlens.guards.latent.guard import LatentGuard
    from harmlens.guards.latent.guard_file import read_guard_file
    from harmlens.runtime import load_model

    tensors, meta, _ = read_guard_file(args.guard)
    name = args.model
    if name is None:  # never load a model a received file names without saying so
        name = meta.get("model")
        if not isinstance(name, str) or not name:
            raise HarmlensError(f"{args.guard} names no model; pass --model")
        print(f"note: loading the model recorded in {args.guard}: {name} (pass --model to choose)", file=sys.stderr)
    kwargs: dict[str, Any] = {}
    if hasattr(args, "max_tokens"):
        kwargs.update(max_tokens=args.max_tokens, on_long=args.on_long, on_injection=args.on_injection)
    fail_closed = not getattr(args, "fail_open", False)
    return LatentGuard(tensors, meta, load_model(name), fail_closed=fail_closed, **kwargs)


def cmd_fit(args: argparse.Namespace) -> int:
    """Fit and save a guard; print its summary as JSON."""
    from harmlens.guards.latent.guard import LatentGuard
    from harmlens.guards.pipeline.guard_runs import fit_summary
    from harmlens.probes.data import load_prompt_source, read_prompts
    from harmlens.runtime import load_model

    validate.out_file(args.out, "guard file")
    config = fit_config(args)  # bad flags fail before any model or prompt is loaded
    harmful = load_prompt_source(args.harmful, "harmful", "train", args.limit)
    harmless = load_prompt_source(args.harmless, "harmless", "train", args.limit)
    val = {}
    if args.val_harmful or args.val_harmless:
        if not (args.val_harmful and args.val_harmless):
            raise HarmlensError("give both --val-harmful and --val-harmless, or neither")
        val = {"val_harmful": read_prompts(args.val_harmful), "val_harmless": read_prompts(args.val_harmless)}
    guard = LatentGuard.fit(load_model(args.model), harmful, harmless, config, progress=True, **val)
    print(json.dumps(fit_summary(guard, guard.save(args.out))))
    return 0


def fit_config(args: argparse.Namespace):
    """The guard config the `fit` flags describe: --variant, else the (--method, --read, --token-probe) triple."""
    from harmlens.guards.latent.configs import DualConfig, SpanConfig, config_class, variant_for

    if args.variant is not None:
        cls = config_class(args.variant)
    elif args.method is None and args.read is None:
        cls = DualConfig  # the default guard
    else:
        method = args.method or ("probe" if args.read == "span" else "centroid")
        cls = variant_for(method, args.read or "t_inst", args.token_probe)
    fields: dict[str, Any] = {"layers": parse_layers(args.layers), "balance": not args.no_balance}
    if args.target_fpr is not None:  # else the variant's own default (the dual guard's is 0.05)
        fields["target_fpr"] = args.target_fpr
    fields |= {"seed": args.seed, "val_fraction": args.val_fraction, "system": args.system}
    if issubclass(cls, SpanConfig):
        groups = [[w.strip() for w in g.split(",") if w.strip()] for g in args.wrappers.split(";") if g.strip()]
        fields["wrappers"] = None if args.wrappers == "none" else "default" if args.wrappers == "default" else groups
    elif args.wrappers != "default":
        raise HarmlensError(f"--wrappers applies to span variants only, not {cls.variant}")
    return cls(**fields)


def _lines(args):
    """(line number, text or None, error) per non-empty input line; bad UTF-8 is reported, not fatal."""
    stream = sys.stdin.buffer if args.prompts == "-" else open(args.prompts, "rb")  # noqa: SIM115
    with stream:
        for n, raw in enumerate(stream, 1):
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
                text = text.removeprefix("\ufeff") if n == 1 else text  # a UTF-8 BOM is not part of the prompt
            except UnicodeDecodeError as exc:
                yield n, None, f"line is not valid UTF-8 (byte {exc.start})"
                continue
            if text.strip():
                yield n, text, None


def cmd_check(args: argparse.Namespace) -> int:
    """Print one JSON verdict per prompt line, in input order, batch by batch."""
    if args.prompts != "-" and not Path(args.prompts).is_file():
        raise HarmlensError(f"prompt file not found: {args.prompts}")
    guard = _load(args)
    guard.batch_size = args.batch_size
    pending: list = []

    def flush() -> None:
        verdicts = iter(guard.check([t for _, t, e in pending if e is None]))
        for n, _text, err in pending:
            verdict = guard.failed(err) if err else next(verdicts)
            print(json.dumps({"line": n, **verdict.to_dict()}, ensure_ascii=False, allow_nan=False), flush=True)
        pending.clear()

    for item in _lines(args):
        pending.append(item)
        if len(pending) >= args.batch_size:
            flush()
    flush()
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate the guard and baselines; write report.json, report.md and roc.png; print the markdown."""
    from harmlens.guards.latent.guard import LatentGuard
    from harmlens.guards.pipeline.guard_runs import evaluate_with_baselines
    from harmlens.probes.data import read_prompts

    validate.out_dir(args.out, "report folder")
    guard = _load(args)
    compared = {}
    for spec in args.compare:
        name, _, path = spec.rpartition("=")
        if not name or not path:
            raise HarmlensError(f"bad --compare {spec!r}: use NAME=GUARD_FILE")
        compared[name] = LatentGuard.load(path, guard.model)
    sets = {}
    for spec in args.set:
        name, _, rest = spec.partition("=")
        path, _, label = rest.rpartition(":")
        if not name or label not in ("harmful", "harmless") or not path:
            raise HarmlensError(f"bad --set {spec!r}: use NAME=PATH:harmful or NAME=PATH:harmless")
        sets[name] = (read_prompts(path, limit=args.limit), label == "harmful")
    report = evaluate_with_baselines(
        guard,
        args.out,
        sets=sets,
        compare=compared,
        baselines=[b.strip() for b in args.baselines.split(",") if b.strip()],
        calibrate=read_prompts(args.calibrate) if args.calibrate else None,
        limit=args.limit,
    )
    print(report.to_markdown())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (the same commands are wired into `python -m harmlens.guards`)."""
    parser = Parser(prog="python -m harmlens.guards.cli.guard")
    add_guard_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return run_cli(lambda: args.func(args))


if __name__ == "__main__":
    exit_cli(main())
