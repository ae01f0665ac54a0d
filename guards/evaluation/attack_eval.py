"""A guard's recall under the guard-aware attacks, with each attack's budget, beside its plain, wrapped and
persuasion recall, and the model's answering rate on the attack prompts (companion of evaluate_guard)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from harmlens.attacks.guard_attack import DEFAULT_GUARD_ATTACK, GuardAttackConfig, GuardAttackResult, guard_attack_many
from harmlens.attacks.guard_common import check_guard, check_instructions
from harmlens.attacks.guard_search import DEFAULT_SEARCH, SearchConfig, SearchResult, guard_search
from harmlens.attacks.persuasion import persuasion_wrap
from harmlens.guards.evaluation.sets import named_wrap

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def _mean(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def white_box_row(results: Sequence[GuardAttackResult], config: GuardAttackConfig) -> dict:
    """Recall (share still flagged), answering rate on the final prompts, ASR (passed and answered), budget."""
    return {
        "attack": "white_box",
        "budget": config.budget,
        "budget_unit": "GCG steps x candidates per request",
        "n": len(results),
        "recall": _mean([not r.passed for r in results]),
        "answer_rate": _mean([r.answered for r in results]),
        "asr": _mean([r.success for r in results]),
        "seconds": round(sum(r.seconds for r in results), 1),
    }


def black_box_row(results: Sequence[SearchResult], config: SearchConfig) -> dict:
    """Recall (no template passed within the budget), answering rate on the passing prompts, ASR, queries spent."""
    passed = [r for r in results if r.passed]
    return {
        "attack": "black_box",
        "budget": config.queries,
        "budget_unit": "guard queries per request",
        "n": len(results),
        "recall": _mean([not r.passed for r in results]),
        "answer_rate": _mean([r.answered for r in passed]),
        "asr": _mean([r.success for r in results]),
        "mean_queries": sum(r.queries for r in results) / len(results) if results else None,
    }


def tpr(guard: Any, prompts: Sequence) -> float:
    """Share of prompts the guard flags."""
    return sum(v.harmful for v in guard.check(list(prompts))) / len(prompts)


def attack_report(
    model: TransformerBridge,
    guard: Any,
    harmful: Sequence[str],
    *,
    white: GuardAttackConfig | None = DEFAULT_GUARD_ATTACK,
    black: SearchConfig | None = DEFAULT_SEARCH,
    name: str | None = None,
    progress: bool = False,
) -> dict:
    """Plain / wrapped (named text jailbreaks) / persuasion TPR on `harmful` and the recall under each attack asked
    for (None skips it); per-request results under 'results'."""
    guard = check_guard(guard, model)
    harmful = check_instructions(harmful)
    out: dict[str, Any] = {
        "guard": name or guard.config.variant,
        "alpha": guard.alpha,
        "n": len(harmful),
        "plain_tpr": tpr(guard, harmful),
        "wrapped_tpr": tpr(guard, named_wrap(harmful)),
        "persuasion_tpr": tpr(guard, persuasion_wrap(harmful)),
        "attacks": [],
        "results": {},
    }
    if white is not None:
        whites = guard_attack_many(model, guard, harmful, white, progress=progress)
        out["attacks"].append(white_box_row(whites, white))
        out["results"]["white_box"] = [{**asdict(r), "success": r.success} for r in whites]
    if black is not None:
        blacks = guard_search(model, guard, harmful, black, progress=progress)
        out["attacks"].append(black_box_row(blacks, black))
        out["results"]["black_box"] = [r.to_dict() for r in blacks]
    return out


def evasions(report: dict) -> list[str]:
    """The attack prompts a report's guard passed (white- and black-box), e.g. positives for a refit."""
    res = report["results"]
    return [r["adversarial"] for r in res.get("white_box", []) if r["passed"]] + [
        r["prompt"] for r in res.get("black_box", []) if r["passed"] and r["setting"] == "none"
    ]


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def attack_markdown(reports: Sequence[dict]) -> str:
    """One row per guard: plain / wrapped / persuasion TPR and, per attack, recall at its budget, answer rate, ASR."""
    head = "| guard | n | plain TPR | wrapped TPR | persuasion TPR | attack | budget | recall | answer rate | ASR |\n"
    lines = [head + "|---|---|---|---|---|---|---|---|---|---|\n"]
    for r in reports:
        base = f"| {r['guard']} | {r['n']} | {_pct(r['plain_tpr'])} | {_pct(r['wrapped_tpr'])} | "
        base += f"{_pct(r['persuasion_tpr'])} | "
        for a in r["attacks"] or [{"attack": "–", "budget": "–", "recall": None, "answer_rate": None, "asr": None}]:
            lines.append(
                base + f"{a['attack']} | {a['budget']} | {_pct(a['recall'])} | {_pct(a['answer_rate'])} | "
                f"{_pct(a['asr'])} |\n"
            )
    return "".join(lines)
