"""Benchmark prompt records (prompt, id, category, context, source, target) from the field's standard files.

Keys are matched case-insensitively (``Goal`` == ``goal``; when two keys differ only in case the first one in the
file wins). A record's layout is the first entry of ``LAYOUTS`` whose required keys it has, so specific benchmark
layouts win over the generic one; the generic layout takes the first present key of ``PROMPT_KEYS`` (in that order of
precedence). Known layouts (published headers):

- ``jailbreakbench``: ``Index,Goal,Target,Behavior,Category,Source`` (harmful and benign behaviours). The prompt is
  ``Goal``; ``Behavior`` is the short behaviour name, used as the id.
- ``harmbench``: ``Behavior,FunctionalCategory,SemanticCategory,Tags,ContextString,BehaviorID``. Contextual
  behaviours are rendered the way HarmBench's own generation does: ``f"{ContextString}\\n\\n---\\n\\n{Behavior}"``;
  a contextual row without a ContextString is an error. ``behavior`` and ``context`` keep the parts.
- ``strongreject``: ``category,source,forbidden_prompt``.
- ``advbench``: ``goal,target`` (harmful_behaviors.csv).
- ``xstest``: ``id,prompt,type,label,focus,note`` (type -> category, label safe/unsafe).
- ``sorry-bench``: ``question_id,category,turns,prompt_style`` (the prompt is the first turn).
- ``simplesafetytests``: ``id,harm_area,category,prompt`` (or ``prompts_final``; harm_area -> category).
- ``catqa``: ``Category,Subcategory,Question``.
- ``generic``: any record with one of ``PROMPT_KEYS`` (e.g. the refusal_direction splits ``instruction,category``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from harmlens.errors import HarmlensError

PROMPT_KEYS = ("goal", "forbidden_prompt", "prompt", "instruction", "bad_q", "question", "behavior", "text")
HARMBENCH_CONTEXT_SEPARATOR = "\n\n---\n\n"


@dataclass(frozen=True)
class PromptRecord:
    """One benchmark item: the prompt the model gets, plus the metadata exports and per-category ASR need."""

    prompt: str
    id: str | None = None
    category: str | None = None
    context: str | None = None
    source: str | None = None
    target: str | None = None
    behavior: str | None = None  # the bare request when the prompt adds context (HarmBench contextual)
    label: str | None = None  # e.g. XSTest 'safe' / 'unsafe'
    benchmark: str = "generic"


def _text(row: dict, key: str) -> str | None:
    value = row.get(key)
    if value is None:
        return None
    value = str(value) if not isinstance(value, str) else value
    return value if value.strip() else None


def _need(row: dict, key: str, where: str) -> str:
    value = _text(row, key)
    if value is None:
        raise HarmlensError(f"{where}: empty {key!r}")
    return value


def _jbb(row: dict, where: str) -> PromptRecord:
    return PromptRecord(
        _need(row, "goal", where),
        id=_text(row, "behavior") or _text(row, "index"),
        category=_text(row, "category"),
        source=_text(row, "source"),
        target=_text(row, "target"),
        behavior=_text(row, "behavior"),
        benchmark="jailbreakbench",
    )


def _harmbench(row: dict, where: str) -> PromptRecord:
    behavior, context = _need(row, "behavior", where), _text(row, "contextstring")
    if (_text(row, "functionalcategory") or "").lower() == "contextual" and context is None:
        raise HarmlensError(f"{where}: HarmBench contextual behaviour {row.get('behaviorid')!r} has no ContextString")
    prompt = f"{context}{HARMBENCH_CONTEXT_SEPARATOR}{behavior}" if context else behavior
    return PromptRecord(
        prompt,
        id=_text(row, "behaviorid"),
        category=_text(row, "semanticcategory"),
        context=context,
        source=_text(row, "functionalcategory"),
        behavior=behavior,
        benchmark="harmbench",
    )


def _strongreject(row: dict, where: str) -> PromptRecord:
    return PromptRecord(
        _need(row, "forbidden_prompt", where),
        category=_text(row, "category"),
        source=_text(row, "source"),
        benchmark="strongreject",
    )


def _advbench(row: dict, where: str) -> PromptRecord:
    return PromptRecord(_need(row, "goal", where), target=_text(row, "target"), benchmark="advbench")


def _xstest(row: dict, where: str) -> PromptRecord:
    return PromptRecord(
        _need(row, "prompt", where),
        id=_text(row, "id"),
        category=_text(row, "type"),
        label=_text(row, "label"),
        benchmark="xstest",
    )


def _sorry(row: dict, where: str) -> PromptRecord:
    turns = row.get("turns")
    if isinstance(turns, str):
        try:
            turns = json.loads(turns)
        except json.JSONDecodeError:
            turns = [turns]
    if not isinstance(turns, list) or not turns or not isinstance(turns[0], str) or not turns[0].strip():
        raise HarmlensError(f"{where}: SORRY-Bench record has no first turn")
    return PromptRecord(
        turns[0],
        id=_text(row, "question_id"),
        category=_text(row, "category"),
        source=_text(row, "prompt_style"),
        benchmark="sorry-bench",
    )


def _sst(row: dict, where: str) -> PromptRecord:
    prompt = _text(row, "prompt") or _need(row, "prompts_final", where)
    return PromptRecord(
        prompt,
        id=_text(row, "id"),
        category=_text(row, "harm_area"),
        source=_text(row, "category"),
        benchmark="simplesafetytests",
    )


def _catqa(row: dict, where: str) -> PromptRecord:
    return PromptRecord(
        _need(row, "question", where),
        category=_text(row, "category"),
        source=_text(row, "subcategory"),
        benchmark="catqa",
    )


def _generic(row: dict, where: str) -> PromptRecord:
    prompt = next(t for t in (_text(row, k) for k in PROMPT_KEYS) if t is not None)
    return PromptRecord(prompt, id=_text(row, "id"), category=_text(row, "category"), source=_text(row, "source"))


Parser = Callable[[dict, str], PromptRecord]
LAYOUTS: tuple[tuple[str, frozenset[str], Parser], ...] = (
    ("harmbench", frozenset({"behavior", "functionalcategory", "semanticcategory", "behaviorid"}), _harmbench),
    ("jailbreakbench", frozenset({"goal", "target", "behavior", "category"}), _jbb),
    ("strongreject", frozenset({"forbidden_prompt"}), _strongreject),
    ("sorry-bench", frozenset({"question_id", "category", "turns"}), _sorry),
    ("simplesafetytests", frozenset({"id", "harm_area"}), _sst),
    ("xstest", frozenset({"prompt", "type", "focus"}), _xstest),
    ("catqa", frozenset({"category", "subcategory", "question"}), _catqa),
    ("advbench", frozenset({"goal", "target"}), _advbench),
)


def lower_keys(row: dict) -> dict:
    """The record with lower-cased keys; the first of two keys that differ only in case wins."""
    out: dict = {}
    for key, value in row.items():
        out.setdefault(str(key).strip().lower(), value)
    return out


def layout_of(keys: set[str]) -> str | None:
    """Name of the layout a set of lower-cased keys matches, 'generic' for a bare prompt key, else None."""
    for name, required, _ in LAYOUTS:
        if required <= keys:
            return name
    return "generic" if any(k in keys for k in PROMPT_KEYS) else None


def parse_row(row: dict, where: str, layout: str | None = None) -> tuple[str, PromptRecord]:
    """(layout name, record) of one dict record; a one-line error naming its keys when no layout fits."""
    low = lower_keys(row)
    name = layout or layout_of(set(low))
    if name is None:
        seen = ", ".join(str(k) for k in row) or "(none)"
        raise HarmlensError(
            f"{where}: unknown record layout with columns {seen}; expected a known benchmark layout "
            f"or one of the prompt keys {', '.join(PROMPT_KEYS)}"
        )
    if name == "generic" and not any(_text(low, k) is not None for k in PROMPT_KEYS):
        raise HarmlensError(f"{where}: record has no non-empty prompt ({', '.join(PROMPT_KEYS)})")
    parser = dict((n, p) for n, _, p in LAYOUTS).get(name, _generic)
    return name, parser(low, where)
