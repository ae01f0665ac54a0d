"""Adversarial probe training, the measured defence: refit a guard's variant with the prompts an attack got past it
as extra positives, then attack the refitted guard again with a fresh budget and compare recall (and harmless FPR).

(Fitting goes through the public `LatentGuard.fit`, so this survives the move of the fitting code.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from harmlens.attacks.guard_attack import DEFAULT_GUARD_ATTACK, GuardAttackConfig
from harmlens.attacks.guard_search import DEFAULT_SEARCH, SearchConfig
from harmlens.errors import HarmlensError
from harmlens.guards.evaluation.attack_eval import attack_report, evasions, tpr
from harmlens.guards.latent.guard import LatentGuard

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def adversarial_refit(
    guard: LatentGuard,
    harmful: Sequence[str],
    harmless: Sequence[str],
    positives: Sequence[str],
    *,
    repeat: int = 1,
    progress: bool = False,
) -> LatentGuard:
    """The guard's variant and settings refitted (and recalibrated, when its config has a target FPR) on harmful +
    `repeat` copies of the attack prompts it missed, against the same harmless prompts."""
    if not positives:
        raise HarmlensError("no attack prompts got past the guard: nothing to refit on")
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise HarmlensError(f"repeat must be a positive integer, got {repeat!r}")
    model = guard.model
    if model is None:
        raise HarmlensError("the guard has no model to refit on: attach(model) first")
    extra = [p for _ in range(repeat) for p in positives]
    return LatentGuard.fit(model, list(harmful) + extra, list(harmless), guard.config, progress=progress)


def refit_effect(
    model: TransformerBridge,
    guard: LatentGuard,
    held_out: Sequence[str],
    fit_harmful: Sequence[str],
    fit_harmless: Sequence[str],
    eval_harmless: Sequence[str],
    *,
    white: GuardAttackConfig | None = DEFAULT_GUARD_ATTACK,
    black: SearchConfig | None = DEFAULT_SEARCH,
    before: dict | None = None,
    repeat: int = 1,
    progress: bool = False,
) -> dict[str, Any]:
    """Attack, refit on the evasions, attack the refitted guard with a fresh budget; recall before/after per attack
    and harmless FPR (eval_harmless) before/after. `before`: an attack_report already run on this guard."""
    before = before or attack_report(model, guard, held_out, white=white, black=black, progress=progress)
    positives = evasions(before)
    if not positives:
        return {"before": before, "after": None, "n_positives": 0, "note": "the attacks never got past the guard"}
    refit = adversarial_refit(guard, fit_harmful, fit_harmless, positives, repeat=repeat, progress=progress)
    after = attack_report(model, refit, held_out, white=white, black=black, name=f"{before['guard']}+refit")
    return {
        "before": before,
        "after": after,
        "n_positives": len(positives),
        "repeat": repeat,
        "harmless_fpr_before": tpr(guard, eval_harmless),
        "harmless_fpr_after": tpr(refit, eval_harmless),
        "alpha_after": refit.alpha,
    }
