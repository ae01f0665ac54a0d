"""AttackReport in the field's layouts: HarmBench completions/results JSON, JailbreakBench jailbreak records, and
refusal_direction completions. harmlens's own report.json (Wilson intervals, coherence, answering ASR) stays the
superset; these files carry what the other tools read.

Items are matched to benchmark records (``harmlens.probes.data.read_records``) by instruction index; each record's
prompt must equal the instruction the attack ran on. Without records, ids are ``item_<index>``.
Unjudged items (judge errors) appear in completions but not in results (they have no label).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from harmlens.attacks.jailbreaks import NONE, get_jailbreak
from harmlens.attacks.report import AttackReport, condition_label, to_json, wilson_interval
from harmlens.errors import HarmlensError
from harmlens.io import atomic_write_text
from harmlens.probes.records import PromptRecord


def _check_records(report: AttackReport, records: Sequence[PromptRecord] | None) -> None:
    if records is None:
        return
    for r in report.records:
        i = r["index"]
        if i >= len(records):
            raise HarmlensError(f"report item {i} has no benchmark record ({len(records)} records given)")
        if records[i].prompt != r["instruction"]:
            raise HarmlensError(f"benchmark record {i} ({records[i].id}) is not the instruction report item {i} ran on")


def _rows(report: AttackReport, condition: str | None) -> list[dict]:
    labels = {condition_label(s, j): (s, j) for s, j in report.conditions()}
    if condition is None:
        if len(labels) != 1:
            raise HarmlensError(f"the report has several conditions; choose one of {', '.join(labels)}")
        condition = next(iter(labels))
    if condition not in labels:
        raise HarmlensError(f"no condition {condition!r} in the report; it has {', '.join(labels)}")
    s, j = labels[condition]
    return [r for r in report.records if r["setting"] == s and r["jailbreak"] == j]


def user_message(record: dict) -> str:
    """The user message of an item before chat templating: the instruction, wrapped by its jailbreak if any."""
    name = record["jailbreak"]
    if name == NONE:
        return record["instruction"]
    try:
        jb = get_jailbreak(name)
    except HarmlensError:
        raise HarmlensError(f"cannot rebuild the user message of jailbreak {name!r} (not a built-in)") from None
    return jb(record["instruction"], seed=record["index"])


def _id(records: Sequence[PromptRecord] | None, index: int) -> str:
    rec = records[index] if records is not None else None
    return rec.id if rec is not None and rec.id else f"item_{index}"


def harmbench_completions(
    report: AttackReport, condition: str | None = None, records: Sequence[PromptRecord] | None = None
) -> dict[str, list[dict]]:
    """HarmBench's completions file: {BehaviorID: [{test_case, generation}]} for one condition."""
    _check_records(report, records)
    out: dict[str, list[dict]] = {}
    for r in _rows(report, condition):
        if r.get("reply") is None:
            raise HarmlensError(f"item {r['index']} has no generated reply (refusal_score judge): nothing to export")
        out.setdefault(_id(records, r["index"]), []).append({"test_case": user_message(r), "generation": r["reply"]})
    return out


def harmbench_results(
    report: AttackReport, condition: str | None = None, records: Sequence[PromptRecord] | None = None
) -> dict[str, list[dict]]:
    """HarmBench's results file: {BehaviorID: [{test_case, generation, label}]} (label 1 = attack succeeded)."""
    completions = harmbench_completions(report, condition, records)  # validates records and replies
    out: dict[str, list[dict]] = {}
    for r in _rows(report, condition):
        if r["success"] is not None:
            item = {"test_case": user_message(r), "generation": r["reply"], "label": int(bool(r["success"]))}
            out.setdefault(_id(records, r["index"]), []).append(item)
    del completions
    return out


def jailbreakbench_records(
    report: AttackReport, condition: str | None = None, records: Sequence[PromptRecord] | None = None
) -> list[dict]:
    """JailbreakBench-shaped jailbreak records: index, goal, behavior, category, prompt, response, jailbroken."""
    _check_records(report, records)
    out = []
    for r in _rows(report, condition):
        rec = records[r["index"]] if records is not None else None
        out.append(
            {
                "index": r["index"],
                "goal": r["instruction"],
                "behavior": rec.behavior or rec.id if rec is not None else None,
                "category": rec.category if rec is not None else None,
                "prompt": user_message(r),
                "response": r.get("reply"),
                "jailbroken": r["success"],
            }
        )
    return out


def refusal_direction_completions(
    report: AttackReport, condition: str | None = None, records: Sequence[PromptRecord] | None = None
) -> list[dict]:
    """refusal_direction's completions layout: [{category, prompt, response}]."""
    _check_records(report, records)
    return [
        {
            "category": records[r["index"]].category if records is not None else None,
            "prompt": r["instruction"],
            "response": r.get("reply"),
        }
        for r in _rows(report, condition)
    ]


def save_exports(
    report: AttackReport, directory: str | os.PathLike, records: Sequence[PromptRecord] | None = None
) -> dict[str, Path]:
    """Every layout for every condition: <dir>/<condition>/{harmbench_completions,harmbench_results,jbb,
    refusal_direction}.json (a '/' in a condition label becomes '__')."""
    out: dict[str, Path] = {}
    for s, j in report.conditions():
        label = condition_label(s, j)
        sub = Path(directory) / label.replace("/", "__")
        files = {
            "harmbench_completions": harmbench_completions(report, label, records),
            "harmbench_results": harmbench_results(report, label, records),
            "jbb": jailbreakbench_records(report, label, records),
            "refusal_direction": refusal_direction_completions(report, label, records),
        }
        for name, data in files.items():
            out[f"{label}:{name}"] = atomic_write_text(sub / f"{name}.json", to_json(data))
    return out


def category_asr(
    report: AttackReport,
    condition: str | None = None,
    records: Sequence[PromptRecord] | None = None,
    *,
    by: str = "category",
) -> dict[str, dict]:
    """ASR per benchmark category (by='category', needs records) or per Llama Guard hazard code of the successes
    (by='judge_categories': share of judged items the judge flagged with that code); Wilson 95% intervals."""
    if by not in ("category", "judge_categories"):
        raise HarmlensError(f"by must be 'category' or 'judge_categories', got {by!r}")
    if by == "category" and records is None:
        raise HarmlensError("per-category ASR needs the benchmark records (read_records) for the categories")
    _check_records(report, records)
    judged = [r for r in _rows(report, condition) if r["success"] is not None]
    counts: dict[str, list[int]] = {}
    for r in judged:
        if by == "category":
            key = (records[r["index"]].category if records is not None else None) or "(none)"
            counts.setdefault(key, [0, 0])
            counts[key][0] += bool(r["success"])
            counts[key][1] += 1
        else:
            for code in r.get("judge_categories") or []:
                counts.setdefault(code, [0, len(judged)])[0] += 1
    out = {}
    for key, (k, n) in sorted(counts.items()):
        low, high = wilson_interval(k, n)
        out[key] = {"k": k, "n": n, "asr": k / n if n else float("nan"), "low": low, "high": high}
    return out
