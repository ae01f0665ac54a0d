"""Before/after measurements of adversarial training: the attack suite, utility, and their markdown tables."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from harmlens.attacks.report import AttackReport
from harmlens.runtime import Backend, GenerationConfig

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def attack_suite(
    model: TransformerBridge,
    out: Path,
    prompts: list[str],
    *,
    settings="all",
    jailbreaks=(),
    judge: str = "substring:rma",
    config: GenerationConfig | None = None,
    backend: str | Backend = "hf",
) -> AttackReport:
    """evaluate_asr on the held-out prompts under every setting × (no jailbreak + each jailbreak), generating as
    `config` says (None: greedy, 32 new tokens); saved to out."""
    from harmlens.attacks.runs import attack_to_folder

    return attack_to_folder(
        model,
        prompts,
        out,
        settings=settings,
        jailbreaks=jailbreaks,
        judge=judge,
        images="builtin",
        config=config if config is not None else GenerationConfig(max_new_tokens=32),
        backend=backend,
    )


def utility_suite(
    model: TransformerBridge,
    out: Path,
    benign: list[str],
    answers: list[tuple[str, str]],
    *,
    settings="all",
    judge: str = "substring:rma",
    config: GenerationConfig | None = None,
    backend: str | Backend = "hf",
) -> dict:
    """Refusal rate on benign prompts per setting (1 − the judge's success rate) and answer cross-entropy."""
    from harmlens.guards.organisms.evaluate import reply_perplexity
    from harmlens.guards.tuning.adapter import unwrap_model

    report = (
        attack_suite(
            model,
            out / "benign",
            benign,
            settings=settings,
            judge=judge,
            config=config,
            backend=backend,
        )
        if benign
        else None
    )
    refusal = {k: round(1 - r.asr, 4) for k, r in report.asr.items()} if report else {}
    tokenizer = getattr(model, "tokenizer", None) or getattr(model, "processor").tokenizer  # noqa: B009 - VLM bridges
    ppl = reply_perplexity(unwrap_model(model), tokenizer, [q for q, _ in answers], [a for _, a in answers])
    return {
        "benign_refusal": refusal,
        "n_benign": len(benign),
        "answer_ce": round(math.log(ppl), 4),
        "n_answers": len(answers),
    }


def compare(before: AttackReport, after: AttackReport) -> list[dict]:
    """Rows of condition, ASR before/after, the relative drop, and answering ASR (harmlens.attacks.quality) before/after."""

    def answering(rate) -> float | None:
        value = getattr(rate, "answer_rate", math.nan) if rate is not None else math.nan
        return None if math.isnan(value) else round(value, 4)

    rows = []
    for label, b in before.asr.items():
        a = after.asr.get(label)
        drop = None if a is None or not b.asr else round(1 - a.asr / b.asr, 4)
        rows.append(
            {
                "condition": label,
                "before": round(b.asr, 4),
                "after": None if a is None else round(a.asr, 4),
                "n": b.n,
                "relative_drop": drop,
                "answering_before": answering(b),
                "answering_after": answering(a),
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    """The before/after table as markdown."""
    pct = lambda x: "–" if x is None else f"{100 * x:.0f}%"  # noqa: E731
    head = "| attack | ASR before | ASR after | relative drop | answering ASR before → after |\n|---|---|---|---|---|\n"
    return head + "".join(
        f"| {r['condition']} | {pct(r['before'])} | {pct(r['after'])} | "
        f"{pct(r['relative_drop'])} | {pct(r.get('answering_before'))} → "
        f"{pct(r.get('answering_after'))} |\n"
        for r in rows
    )


def held_out_answers(n_trained: int, n: int = 100) -> list[tuple[str, str]]:
    """Shipped Alpaca pairs past the first n_trained (so not in this adversarial training run), for cross-entropy."""
    from harmlens.guards.organisms.datasets import harmless_train

    pairs = harmless_train()
    return pairs[max(n_trained, len(pairs) - n) :]


def utility_markdown(use: dict) -> str:
    """Benign refusal per setting and answer cross-entropy, before → after, as markdown."""
    b, a = use["before"], use["after"]
    rows = "".join(
        f"| benign refusal, {k} | {100 * v:.0f}% | {100 * a['benign_refusal'].get(k, math.nan):.0f}% |\n"
        for k, v in b["benign_refusal"].items()
    )
    return (
        "| utility | before | after |\n|---|---|---|\n"
        + rows
        + f"| answer cross-entropy (n={b['n_answers']}) | {b['answer_ce']:.3f} | {a['answer_ce']:.3f} |\n"
    )
