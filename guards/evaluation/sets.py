"""Evaluation sets for guards: plain, jailbreak-wrapped (GPTFuzzer, named text jailbreaks) and RMA-perturbed."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from harmlens.attacks.jailbreaks import NAMED, gptfuzzer, gptfuzzer_templates
from harmlens.attacks.persuasion import persuasion_wrap
from harmlens.attacks.settings import perturb
from harmlens.errors import HarmlensError
from harmlens.runtime import ChatPrompt, role_template

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def gptfuzzer_wrap(prompts: Sequence[str], template_ids: Sequence[str | int] | None = None, seed: int = 0) -> list[str]:
    """Each prompt inside a GPTFuzzer template drawn (seeded) from template_ids (default: all 77)."""
    ids = [str(t) for t in (template_ids if template_ids is not None else gptfuzzer_templates())]
    if not ids:
        raise HarmlensError("no GPTFuzzer templates to draw from")
    rng = random.Random(seed)
    return [gptfuzzer(rng.choice(ids))(p) for p in prompts]


def named_wrap(prompts: Sequence[str], names: Sequence[str] | None = None) -> list[str]:
    """Each prompt rewritten by the named text jailbreaks in turn (aim, prefix_injection, ...)."""
    names = list(names or NAMED)
    return [NAMED[names[i % len(names)]](p, seed=i) for i, p in enumerate(prompts)]


def rma_perturb(model: TransformerBridge, prompts: Sequence[str], setting: str = "swap") -> list[ChatPrompt]:
    """Prompts rendered under an RMA setting (t_inst located in the perturbed structure)."""
    template = role_template(model)
    return [perturb(template, p, setting) for p in prompts]


def gcg_sets(gcg_json, harmful: Sequence[str], harmless: Sequence[str]) -> dict:
    """GCG sets from a `python -m harmlens.attacks gcg` run: the attacked prompts with their own suffixes ('gcg'), the
    suffixes moved to other harmful prompts ('gcg_transfer') and to harmless ones ('gcg_transfer_harmless')."""
    from harmlens.attacks.gcg import load_gcg_results

    results = load_gcg_results(gcg_json)
    if not results:
        raise HarmlensError(f"{gcg_json} holds no GCG results")
    seen = {r.instruction for r in results}
    others = [p for p in harmful if p not in seen]
    cycle = lambda ps: [p + results[i % len(results)].suffix for i, p in enumerate(ps)]  # noqa: E731
    return {
        "gcg": ([r.adversarial for r in results], True),
        "gcg_transfer": (cycle(others), True),
        "gcg_transfer_harmless": (cycle(harmless), False),
    }


def fit_wrappers(guard) -> set[str]:
    """Names of the jailbreaks a guard was fitted on (a span guard's wrappers; empty for a t_inst guard)."""
    return {w for group in guard.metadata.get("fit", {}).get("wrappers") or [] for w in group}


def shipped_sets(
    model: TransformerBridge | None = None,
    *,
    limit: int | None = None,
    seed: int = 0,
    template_ids=None,
    exclude: set[str] | frozenset = frozenset(),
) -> dict:
    """{name: (prompts, harmful?)} from guards/data's held-out prompts; RMA sets need the model's template.

    Harmless prompts wrapped in the same jailbreaks are controls: a guard that flags the wrapper fails them.
    `exclude`: jailbreak names ('aim', 'gptfuzzer:12') a guard was fitted on, left out of the jailbreak sets.
    """
    from harmlens.guards.organisms.datasets import eval_prompts

    harmful, harmless = eval_prompts("harmful")[:limit], eval_prompts("harmless")[:limit]
    named = [n for n in NAMED if n not in exclude]
    ids = [
        i
        for i in (template_ids if template_ids is not None else gptfuzzer_templates())
        if f"gptfuzzer:{i}" not in exclude
    ]
    sets: dict[str, tuple[list, bool]] = {
        "plain_harmful": (harmful, True),
        "plain_harmless": (harmless, False),
        "xstest_safe": (eval_prompts("xstest")[:limit], False),
    }
    if ids:
        sets |= {
            "gptfuzzer": (gptfuzzer_wrap(harmful, ids, seed), True),
            "gptfuzzer_harmless": (gptfuzzer_wrap(harmless, ids, seed), False),
        }
    if named:
        sets |= {
            "text_jailbreaks": (named_wrap(harmful, named), True),
            "text_jailbreaks_harmless": (named_wrap(harmless, named), False),
        }
    sets |= {  # persuasion-style paraphrases (template-built); the harmless control catches a guard flagging the frame
        "persuasion": (persuasion_wrap(harmful, seed=seed), True),
        "persuasion_harmless": (persuasion_wrap(harmless, seed=seed), False),
    }
    if model is not None:
        sets["rma_swap"] = (rma_perturb(model, harmful), True)
        sets["rma_swap_harmless"] = (rma_perturb(model, harmless), False)
    return sets
