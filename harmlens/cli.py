"""Pieces every harmlens CLI shares: layer/offset list parsing and one-line error handling."""

from __future__ import annotations

import sys
from collections.abc import Callable

from harmlens.errors import HarmlensError


def parse_layers(text: str | None) -> list[int] | None:
    """Parse '3,5,10-12' into [3, 5, 10, 11, 12]; None or '' stays None."""
    if not text:
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            out.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    except ValueError:
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


def run_cli(command: Callable[[], int], *, interrupted: str = "interrupted: nothing half-written") -> int:
    """Run a CLI command: HarmlensError -> 'error: …' on stderr and exit 2; Ctrl-C -> exit 130 with a hint."""
    try:
        return command()
    except HarmlensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
