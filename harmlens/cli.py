"""Pieces every harmlens CLI shares: a one-line-error parser, checked argument types, layer/offset lists, run_cli."""

from __future__ import annotations

import argparse
import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

from harmlens import validate
from harmlens.errors import HarmlensError


class Parser(argparse.ArgumentParser):
    """argparse with bad arguments reported as one line, `error: ...`, exit 2 (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        """Print one line and exit 2."""
        self.exit(2, f"error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _arg(check: Callable, *args, **kwargs) -> Callable[[str], object]:
    def parse(text: str):
        try:
            return check(text, *args, **kwargs)
        except HarmlensError as exc:
            raise argparse.ArgumentTypeError(str(exc).replace("value ", "", 1)) from None

    parse.__name__ = check.__name__  # argparse names the type in its messages
    return parse


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1 (counts, batch sizes, steps)."""
    return _arg(validate.count, "value")(text)  # type: ignore[return-value]


def nonneg_int(text: str) -> int:
    """argparse type: an integer ≥ 0."""
    return _arg(validate.count, "value", minimum=0)(text)  # type: ignore[return-value]


def finite_float(text: str) -> float:
    """argparse type: a finite number (nan and inf are refused)."""
    return _arg(validate.finite, "value")(text)  # type: ignore[return-value]


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _arg(validate.finite, "value", minimum=0.0, open_min=True)(text)  # type: ignore[return-value]


def fraction(text: str) -> float:
    """argparse type: a finite number in [0, 1]."""
    return _arg(validate.finite, "value", minimum=0.0, maximum=1.0)(text)  # type: ignore[return-value]


def top_p(text: str) -> float:
    """argparse type: a finite number in (0, 1] (nucleus sampling mass)."""
    return _arg(validate.finite, "value", minimum=0.0, maximum=1.0, open_min=True)(text)  # type: ignore[return-value]


def user_text(text: str) -> str:
    """argparse type: text without NUL characters (e.g. --system)."""
    return _arg(validate.text, "value")(text)  # type: ignore[return-value]


def device_arg(text: str) -> str:
    """argparse type: a device that exists on this machine (cpu, cuda, cuda:N, mps)."""
    _arg(validate.device)(text)
    return text


def add_generation_args(
    p: argparse.ArgumentParser,
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    batch_flag: str = "--batch-size",
    sampling: bool = True,
    quiet: bool = True,
    what: str = "",
) -> None:
    """The generation flags every CLI shares (--max-new-tokens, a batch flag; with `sampling` --sample, --temperature,
    --top-p and --seed; with `quiet` --quiet); generation_fields reads them back for one GenerationConfig."""
    where = f" {what}" if what else ""
    p.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=max_new_tokens,
        help=f"reply length cap in tokens{where} (default {max_new_tokens})",
    )
    dest = batch_flag.lstrip("-").replace("-", "_")
    p.add_argument(
        batch_flag, type=positive_int, default=batch_size, help=f"prompts per generation batch (default {batch_size})"
    )
    if sampling:
        p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding (seeded)")
        p.add_argument("--temperature", type=positive_float, default=1.0, help="sampling temperature with --sample")
        p.add_argument("--top-p", type=top_p, default=1.0, help="nucleus sampling mass with --sample, in (0, 1]")
        p.add_argument("--seed", type=nonneg_int, default=0, help="seed for sampling and randomised jailbreaks")
    if quiet:
        p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(generation_batch_dest=dest)


def generation_fields(args: argparse.Namespace, **fixed: object) -> dict:
    """The GenerationConfig fields the flags of add_generation_args set (`fixed` fields win, e.g. progress=False):
    callers build GenerationConfig(**fields), which checks them (this layer does not import the runtime)."""
    fields: dict = {
        "max_new_tokens": args.max_new_tokens,
        "batch_size": getattr(args, getattr(args, "generation_batch_dest", "batch_size")),
        "progress": not getattr(args, "quiet", False),
    }
    if hasattr(args, "sample"):
        fields.update(do_sample=args.sample, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    return {**fields, **fixed}


def parse_layers(text: str | None) -> list[int] | None:
    """Parse '3,5,10-12' into [3, 5, 10, 11, 12]; None or '' stays None."""
    if not text:
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            a, b = int(lo), int(hi) if hi else int(lo)
            if max(a, b) > validate.MAX_LAYER:  # checked before the range is built (0-20000000 would take GBs)
                raise HarmlensError(f"bad layer list {text!r}: layer {max(a, b)} is beyond any model")
            if b < a:
                raise HarmlensError(f"bad layer list {text!r}: range {a}-{b} is empty")
            out.extend(range(a, b + 1))
    except ValueError as exc:
        if isinstance(exc, HarmlensError):
            raise
        raise HarmlensError(f"bad layer list {text!r}: use e.g. '4,8,10-12'") from None
    return out


def parse_offsets(text: str | None) -> list[int] | None:
    """Parse '-1,-3' into a list of (negative) post-instruction offsets."""
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise HarmlensError(f"bad position list {text!r}: use negative offsets, e.g. '-1,-2'") from None


def _on_sigterm(signum, frame) -> NoReturn:
    raise KeyboardInterrupt  # unwinds like Ctrl-C: temp files and folders are removed on the way out


def library_error(exc: BaseException) -> str | None:
    """A one-line message for library errors bad input can cause (None: a bug, let the traceback show)."""
    name = type(exc).__name__
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    if isinstance(exc, RecursionError):
        return "input is nested too deeply to read"
    if isinstance(exc, pickle.UnpicklingError):
        return f"refusing a pickled file (harmlens never executes pickles; use safetensors): {str(exc)[:120]}"
    if name in ("DecompressionBombError", "UnidentifiedImageError"):
        return f"unusable image: {' '.join(str(exc).split())[:200]}"
    if isinstance(exc, MemoryError):
        return "out of memory"
    if isinstance(exc, UnicodeEncodeError):  # e.g. a lone surrogate (from a JSON escape) written as UTF-8
        return f"cannot write text: it cannot be encoded as {exc.encoding} ({exc.reason})"
    if name == "SafetensorError":  # not an OSError: a full disk under save_pretrained, or a damaged file read
        from harmlens.io import write_failure

        text = write_failure(exc)
        if str(exc).startswith("Error while serializing"):
            return f"cannot write safetensors: {text}"
        return f"unreadable safetensors file: {text[:200]}"
    return None


def run_cli(command: Callable[[], int], *, interrupted: str = "interrupted: nothing half-written") -> int:
    """Run a CLI command: HarmlensError and library errors from bad input or a full disk (OSError, SafetensorError,
    RecursionError, pickles, images, unencodable text) -> 'error: …' on stderr and exit 2; Ctrl-C or SIGTERM -> exit
    130 with a hint."""
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread
        previous = None
    try:
        return command()
    except HarmlensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    except (OSError, RecursionError, pickle.UnpicklingError, MemoryError, ValueError) as exc:
        message = library_error(exc)
        if message is None:
            raise
        print(f"error: {' '.join(message.split())}", file=sys.stderr)
        return 2
    except Exception as exc:  # PIL's DecompressionBombError and friends (PIL is imported lazily)
        message = library_error(exc)
        if message is None:
            raise
        print(f"error: {' '.join(message.split())}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def exit_cli(code: int) -> NoReturn:
    """sys.exit for `python -m harmlens...`: a Ctrl-C or SIGTERM that lands while the process shuts down (its work
    done and written) exits 130 with one line, instead of an 'Exception ignored in atexit callback' traceback and 0.
    The exit-time cleanup still to run then is skipped, as a second Ctrl-C would."""

    def late(signum, frame) -> NoReturn:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        if code == 0:
            os.write(2, b"interrupted while exiting (the outputs were already complete)\n")
        os._exit(130)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, late)
    sys.exit(code)
