"""Text jailbreaks (named ones and the shipped GPTFuzzer templates): each maps an instruction to a new instruction."""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from harmlens.attacks import jailbreak_texts as T
from harmlens.errors import HarmlensError

GPTFUZZER_SLOT = "[INSERT PROMPT HERE]"
NONE = "none"


@dataclass(frozen=True)
class Jailbreak:
    """A named rewrite of an instruction; `seed` feeds the randomised ones (payload splitting)."""

    name: str
    rewrite: Callable[[str, int], str]
    description: str = ""

    def __call__(self, instruction: str, seed: int = 0) -> str:
        """The jailbroken instruction."""
        return self.rewrite(instruction, seed)


def _fill(template: str) -> Callable[[str, int], str]:
    return lambda q, seed: template.format(query=q)


def split_payload(instruction: str, seed: int = 0) -> tuple[str, str, str]:
    """A seeded random 3-way split of the instruction at word boundaries (character cuts for short ones)."""
    rng = random.Random(seed)
    words = instruction.split(" ")
    if len(words) >= 3:
        i, j = sorted(rng.sample(range(1, len(words)), 2))
        return " ".join(words[:i]) + " ", " ".join(words[i:j]) + " ", " ".join(words[j:])
    if len(instruction) < 3:
        return instruction, "", ""
    i, j = sorted(rng.sample(range(1, len(instruction)), 2))
    return instruction[:i], instruction[i:j], instruction[j:]


def _payload(instruction: str, seed: int) -> str:
    a, b, c = (s.replace("\\", "\\\\").replace('"', '\\"') for s in split_payload(instruction, seed))
    return T.PAYLOAD_SPLITTING.format(a=a, b=b, c=c)


def _few_shot_json(instruction: str, seed: int) -> str:
    return T.FEW_SHOT_JSON.format(query_json=json.dumps(instruction, ensure_ascii=False)[1:-1])


NAMED: dict[str, Jailbreak] = {
    jb.name: jb
    for jb in (
        Jailbreak("aim", _fill(T.AIM), "role-play as AIM, an amoral Machiavellian chatbot"),
        Jailbreak("prefix_injection", _fill(T.PREFIX_INJECTION), "force an affirmative opening phrase"),
        Jailbreak(
            "refusal_suppression", _fill(T.REFUSAL_SUPPRESSION), "forbid apologies, disclaimers and refusal words"
        ),
        Jailbreak("style_injection", _fill(T.STYLE_INJECTION), "short style rules (no punctuation, short words)"),
        Jailbreak("evil_confidant", _fill(T.EVIL_CONFIDANT), "role-play as an unethical confidant"),
        Jailbreak("payload_splitting", _payload, "the instruction split into 3 strings the model must join"),
        Jailbreak("few_shot_json", _few_shot_json, "complete a JSON list of always-compliant examples"),
    )
}


@lru_cache(maxsize=1)
def gptfuzzer_templates() -> dict[str, str]:
    """The 77 GPTFuzzer seed templates shipped with harmlens, by id ('0'..'76')."""
    text = resources.files("harmlens.attacks").joinpath("data/gptfuzzer_templates.csv").read_text(encoding="utf-8")
    rows = {row["id"]: row["text"] for row in csv.DictReader(text.splitlines(keepends=True))}
    bad = [k for k, v in rows.items() if GPTFUZZER_SLOT not in v]
    if bad:
        raise HarmlensError(f"GPTFuzzer templates {bad} lack the {GPTFUZZER_SLOT} slot")
    return rows


def gptfuzzer(template_id: str | int) -> Jailbreak:
    """One GPTFuzzer template as a Jailbreak named 'gptfuzzer:<id>' ([INSERT PROMPT HERE] = the instruction)."""
    templates = gptfuzzer_templates()
    key = str(template_id)
    if key not in templates:
        raise HarmlensError(f"no GPTFuzzer template {template_id!r}; ids are 0..{len(templates) - 1}")
    text = templates[key]
    return Jailbreak(f"gptfuzzer:{key}", lambda q, seed: text.replace(GPTFUZZER_SLOT, q), "GPTFuzzer seed template")


def custom(name: str, template: str) -> Jailbreak:
    """A user template with '{query}' (or GPTFuzzer's '[INSERT PROMPT HERE]') where the instruction goes."""
    slot = "{query}" if "{query}" in template else GPTFUZZER_SLOT if GPTFUZZER_SLOT in template else None
    if slot is None:
        raise HarmlensError(f"jailbreak template {name!r} has no '{{query}}' or '{GPTFUZZER_SLOT}' slot")
    return Jailbreak(name, lambda q, seed: template.replace(slot, q), "custom template")


def get_jailbreak(name: str | Jailbreak) -> Jailbreak:
    """A jailbreak by name: one of the named ones or 'gptfuzzer:<id>'."""
    if isinstance(name, Jailbreak):
        return name
    key = str(name).strip().lower()
    if key in NAMED:
        return NAMED[key]
    if key.startswith("gptfuzzer:"):
        return gptfuzzer(key.split(":", 1)[1])
    raise HarmlensError(
        f"unknown jailbreak {name!r}; choose from {', '.join(NAMED)}, gptfuzzer:<0..76>, or 'all' (every named one)"
    )


def resolve_jailbreaks(names: Iterable[str | Jailbreak] | str | None) -> list[Jailbreak | None]:
    """[None] (no jailbreak) plus the requested ones; 'all' = every named jailbreak, 'gptfuzzer' = all 77 templates."""
    if names is None:
        return [None]
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    out: list[Jailbreak | None] = [None]
    for name in names:
        if name == "all":
            out.extend(NAMED.values())
        elif name == "gptfuzzer":
            out.extend(gptfuzzer(k) for k in gptfuzzer_templates())
        elif name != NONE:
            out.append(get_jailbreak(name))
    seen: dict[str, Jailbreak | None] = {}
    for jb in out:
        seen.setdefault(jb.name if jb else NONE, jb)
    return list(seen.values())


def jailbreak_name(jb: Jailbreak | None) -> str:
    """The record name of a jailbreak ('none' for the plain instruction)."""
    return jb.name if jb is not None else NONE
