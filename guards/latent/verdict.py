"""A guard's per-prompt Verdict (strict-JSON ready) and how a prompt is rendered and read: truncation, span positions."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from harmlens.errors import HarmlensError
from harmlens.runtime import ChatFormat, ChatPrompt


@dataclass(frozen=True)
class Verdict:
    """One prompt's decision: harmful ⇔ score ≥ threshold; `error` says why no score exists (then fail-closed)."""

    harmful: bool
    score: float
    per_layer: dict[int, float] = field(default_factory=dict)
    threshold: float = 0.0
    error: str | None = None
    truncated: bool = False  # the instruction was cut from the left to fit the context (or max_tokens)
    injection: bool = False  # the prompt contains role/special-token markers (see harmlens.runtime.markers)

    def to_dict(self) -> dict:
        """Strict-JSON-ready dict: a missing or non-finite number (NaN score of a failed verdict) becomes None."""
        return {
            "harmful": bool(self.harmful),
            "score": _finite(self.score),
            "threshold": _finite(self.threshold),
            "error": None if self.error is None else str(self.error),
            "truncated": bool(self.truncated),
            "injection": bool(self.injection),
            "per_layer": {str(k): _finite(v) for k, v in self.per_layer.items()},
        }


def failed_verdict(guard: Any, reason: object, truncated: bool = False, *, attempted: bool = False) -> Verdict:
    """The verdict for a prompt `guard` could not score; never raises. Harmful, unless the model read the prompt
    (`attempted`) and the guard fails open (fail_closed=False): bad input never passes."""
    try:
        text = " ".join(str(reason).split())[:300]
        harmful = True if not attempted else guard.fail_closed is not False
        return Verdict(harmful, float("nan"), {}, guard.alpha, text, truncated is True)
    except Exception:  # noqa: BLE001 - the fail-closed path cannot fail
        return Verdict(True, float("nan"), {}, float("nan"), "internal error: the guard could not describe a failure")


def _finite(x: object) -> float | None:
    try:
        value = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return round(value, 6) if math.isfinite(value) else None


def layers_text(layers: list[int]) -> str:
    """Compact text for a layer list: '0..30' when contiguous (as harmlens.probes.directions.layer_span)."""
    if layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 2:
        return f"{layers[0]}..{layers[-1]}"
    return ", ".join(map(str, layers))


def span_positions(prompt: ChatPrompt, width: int) -> tuple[int, ...]:
    """Every token from span_start up to t_inst, padded to `width` by repeating t_inst (a repeat never changes a
    maximum)."""
    n = prompt.t_inst + 1 - prompt.span_start
    return tuple(range(prompt.span_start, prompt.t_inst + 1)) + (prompt.t_inst,) * max(0, width - n)


def render_prompt(fmt: ChatFormat, prompt: str | ChatPrompt, max_length: int | None) -> tuple[ChatPrompt, bool]:
    """(rendered prompt, truncated): an over-long instruction loses tokens from its left until the prompt fits."""
    if isinstance(prompt, ChatPrompt):
        if max_length is not None and len(prompt) > max_length:
            raise HarmlensError(f"pre-rendered prompt is {len(prompt)} tokens, over the context of {max_length}")
        check_rendered(prompt, len(fmt.tokenizer))  # type: ignore[arg-type]
        return prompt, False
    free = dataclasses.replace(fmt, max_length=None)
    rendered = free.render(prompt)
    if max_length is None or len(rendered) <= max_length:
        return rendered, False
    tok: Any = fmt.tokenizer
    ids = tok(rendered.instruction, add_special_tokens=False)["input_ids"]
    keep = len(ids) - (len(rendered) - max_length)
    while keep > 0:
        text = tok.decode(ids[-keep:]).strip()
        if text:
            rendered = free.render(text)
            if len(rendered) <= max_length:
                return rendered, True
            keep -= max(1, len(rendered) - max_length)
        else:
            keep -= 1
    raise HarmlensError(f"the chat template alone does not fit the context of {max_length} tokens")


def check_rendered(prompt: ChatPrompt, vocab: int) -> None:
    """Raise HarmlensError unless a pre-rendered prompt's token ids and positions are ones the model can read."""
    n, ids = len(prompt.input_ids), prompt.input_ids
    if not n or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab for i in ids):
        raise HarmlensError(f"pre-rendered prompt has token ids outside the vocabulary of {vocab}")
    positions = (prompt.t_inst, *prompt.post_inst)
    if not prompt.post_inst or not all(isinstance(i, int) and 0 <= i < n for i in positions):
        raise HarmlensError(f"pre-rendered prompt has t_inst/post-instruction positions outside its {n} tokens")


def one_line(exc: BaseException) -> str:
    """An exception as one line: a HarmlensError's message, else 'Type: message' (at most 300 characters)."""
    try:
        text = " ".join(str(exc).split())
    except Exception:  # noqa: BLE001 - a hostile __str__ must not break the fail-closed path
        text = "(unprintable)"
    return text[:300] if isinstance(exc, HarmlensError) else f"{type(exc).__name__}: {text}"[:300]
