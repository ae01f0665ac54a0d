"""What both guard-aware attacks share: the guard/model and budget checks, and whether the model answers a prompt.

The attacks see a guard only through its public methods (check, prepare, select, width, layers, score_acts, alpha,
metadata), so they run against any LatentGuard variant and attacks never imports guards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from harmlens.attacks.judges import SubstringJudge, coherent
from harmlens.errors import HarmlensError
from harmlens.io import check_compatible
from harmlens.runtime import ChatPrompt, chat_format, generate

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def check_guard(guard: Any, model: TransformerBridge) -> Any:
    """The guard, attached to `model`; refuses (one line) a guard fitted on another model or that is not a guard."""
    if not all(hasattr(guard, name) for name in ("check", "score_acts", "prepare", "metadata")):
        raise HarmlensError(f"expected a LatentGuard, got {type(guard).__name__}")
    try:
        check_compatible(guard.metadata, model)
    except HarmlensError as exc:
        raise HarmlensError(f"cannot attack this guard with this model: {exc}") from None
    if guard.model is None:
        guard.attach(model)
    elif guard.model is not model:
        check_compatible(guard.metadata, guard.model)
    return guard


def check_budget(name: str, value: object) -> int:
    """A positive integer budget, or a one-line HarmlensError (0, negative, bool, not an integer)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HarmlensError(f"attack budget {name} must be a positive integer, got {value!r}")
    return value


def check_instructions(instructions: Sequence[str]) -> list[str]:
    """A non-empty list of non-empty strings."""
    if isinstance(instructions, str) or not instructions:
        raise HarmlensError("expected a non-empty list of instructions to attack")
    bad = [x for x in instructions if not isinstance(x, str) or not x.strip()]
    if bad:
        raise HarmlensError(f"instructions must be non-empty strings, got {bad[0]!r}")
    return list(instructions)


def answers(
    model: TransformerBridge, prompts: Sequence[str | ChatPrompt], *, max_new_tokens: int = 48, phrases: str = "rma"
) -> tuple[list[str], list[bool]]:
    """(greedy replies, answered?) for prompts (strings in the model's own template, or pre-rendered, e.g. RMA):
    answered = no refusal phrase (substring judge) and a coherent reply."""
    if not prompts:
        return [], []
    judge = SubstringJudge(phrases)
    fmt = chat_format(model)
    rendered = [p if isinstance(p, ChatPrompt) else fmt.render(p) for p in prompts]
    replies = generate(model, rendered, max_new_tokens=max_new_tokens, progress=False)
    return replies, [not judge.refused(r) and coherent(r) for r in replies]
