"""evaluate_asr: generate under every (setting, jailbreak), judge, stream records to JSONL and resume interrupted runs."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from harmlens.attacks.images import load_images
from harmlens.attacks.jailbreaks import Jailbreak, jailbreak_name, resolve_jailbreaks
from harmlens.attacks.judges import Judge, JudgeItem, coherent, get_judge
from harmlens.attacks.report import AttackReport
from harmlens.attacks.settings import Setting, get_setting, perturb, perturbed_pieces, resolve_settings
from harmlens.attacks.template import RoleTemplate, role_template
from harmlens.attacks.vlm import generate_with_images
from harmlens.errors import HarmlensError
from harmlens.probes.chat import ChatPrompt
from harmlens.probes.loading import model_name
from harmlens.probes.markers import tokenize_prompt

RESULTS_FILE = "results.jsonl"
_KEYS = (
    "model",
    "judge",
    "max_new_tokens",
    "do_sample",
    "temperature",
    "seed",
    "system",
    "strip_system",
    "instructions_sha256",
)


def _check_instructions(instructions) -> list[str]:
    if isinstance(instructions, str) or not isinstance(instructions, Sequence):
        raise HarmlensError("instructions must be a list of strings")
    if not instructions:
        raise HarmlensError("empty instruction list: nothing to attack")
    bad = [i for i, x in enumerate(instructions) if not isinstance(x, str) or not x.strip()]
    if bad:
        raise HarmlensError(f"instruction {bad[0]} is empty or not a string")
    return list(instructions)


def build_prompts(
    template: RoleTemplate, instructions: list[str], settings: list[Setting], jailbreaks: list[Jailbreak | None]
) -> dict[tuple[str, str, int], object]:
    """Every perturbed ChatPrompt, keyed (setting, jailbreak, index); errors name the item (nothing runs first)."""
    out = {}
    for jb in jailbreaks:
        for i, text in enumerate(instructions):
            query = jb(text, seed=i) if jb is not None else text
            for s in settings:
                try:
                    out[(s.name, jailbreak_name(jb), i)] = perturb(template, query, s)
                except HarmlensError as exc:
                    raise HarmlensError(f"instruction {i} ({jailbreak_name(jb)}, {s.name}): {exc}") from None
    return out


def judge_safely(judge: Judge, items: list[JudgeItem]) -> list[tuple[bool | None, str | None]]:
    """(success, error) per item: the batch first, then item by item, so one bad item never loses the rest."""
    try:
        verdicts = judge.judge(items)
        if len(verdicts) != len(items):
            raise HarmlensError(f"judge returned {len(verdicts)} verdicts for {len(items)} items")
        return [(bool(v), None) for v in verdicts]
    except Exception:  # noqa: BLE001 - any judge failure is isolated per item below
        if len(items) == 1:
            return [_judge_one(judge, items[0])]
        return [_judge_one(judge, item) for item in items]


def judge_details(judge: Judge, item: JudgeItem) -> dict:
    """Extra per-item fields a judge offers through an optional details(item) (scores, hazard codes), else {}."""
    details = getattr(judge, "details", None)
    return details(item) if callable(details) else {}


def _judge_one(judge: Judge, item: JudgeItem) -> tuple[bool | None, str | None]:
    try:
        (verdict,) = judge.judge([item])
        return bool(verdict), None
    except Exception as exc:  # noqa: BLE001
        return None, f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def _read_results(path: Path, header: dict) -> dict[tuple[str, str, int], dict]:
    """Records already in a results file written with the same parameters (a torn last line is dropped)."""
    if not path.is_file():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        return {}
    try:
        old = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        old = {}
    diff = [k for k in _KEYS if old.get(k) != header.get(k)]
    if diff:
        raise HarmlensError(
            f"{path} holds results of a different run ({', '.join(diff)} differ); "
            f"choose another output folder or delete the file"
        )
    done = {}
    for line in lines[1:]:
        try:
            rec = json.loads(line)
            done[(rec["setting"], rec["jailbreak"], rec["index"])] = rec
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # interrupted mid-write
    return done


def evaluate_asr(
    model,
    instructions: list[str],
    *,
    settings=None,
    jailbreaks=(),
    judge: str | Judge = "substring:rma",
    images=None,
    out: str | os.PathLike | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    system: str | None = None,
    strip_system: bool = False,
    template: RoleTemplate | None = None,
    processor=None,
    progress: bool = True,
) -> AttackReport:
    """ASR of each (setting × jailbreak) on the instructions; with `out`, results stream to out/results.jsonl.

    Rerunning with the same arguments resumes: finished items are kept, items whose judge failed are re-judged from
    their stored reply. Greedy runs resume exactly; sampled ones are seeded per chunk, so a resumed sampled run is
    reproducible but not identical to an uninterrupted one.
    """
    from harmlens.probes.generation import generate

    instructions = _check_instructions(instructions)
    processor = processor if processor is not None else getattr(model, "processor", None)  # load_organism("vlm")
    template = template or role_template(model, system=system, strip_system=strip_system, processor=processor)
    settings = resolve_settings(settings, supports_images=template.supports_images)
    pictures = load_images(images, len(instructions)) if any(s.needs_image for s in settings) else None
    if pictures is not None and processor is None:
        raise HarmlensError("image settings need the model's processor: evaluate_asr(..., processor=...)")
    jbs = resolve_jailbreaks(jailbreaks)
    judge = get_judge(judge, model)
    prompts = build_prompts(template, instructions, settings, jbs)
    header = {
        "harmlens": "attacks.results",
        "model": model_name(model),
        "judge": judge.name,
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "temperature": temperature if do_sample else None,
        "seed": seed,
        "system": system,
        "strip_system": strip_system,
        "n_instructions": len(instructions),
        "instructions_sha256": hashlib.sha256(json.dumps(instructions).encode()).hexdigest(),
    }
    path = Path(out) / RESULTS_FILE if out is not None else None
    done = _read_results(path, header) if path is not None else {}
    if path is not None and not done and (not path.is_file() or path.stat().st_size == 0):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(header) + "\n", encoding="utf-8")
    todo = [k for k in prompts if k not in done or (done[k]["success"] is None and done[k]["reply"] is not None)]
    bar = tqdm(
        total=len(prompts), initial=len(prompts) - len(todo), desc="attacking", unit="prompt", disable=not progress
    )
    chunk = batch_size * 4
    for start in range(0, len(todo), chunk):
        keys = todo[start : start + chunk]
        need = [k for k in keys if judge.needs_reply and k not in done]
        gen = dict(
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            do_sample=do_sample,
            temperature=temperature,
            seed=seed + start,
        )
        text_keys = [k for k in need if not get_setting(k[0]).needs_image]
        replies = dict(
            zip(text_keys, generate(model, [prompts[k] for k in text_keys], progress=False, **gen) if text_keys else [])
        )
        image_keys = [k for k in need if get_setting(k[0]).needs_image]
        if image_keys:
            replies.update(
                zip(
                    image_keys,
                    generate_with_images(
                        model, processor, [prompts[k] for k in image_keys], [pictures[k[2]] for k in image_keys], **gen
                    ),
                )
            )
        for k in keys:
            replies.setdefault(k, done[k]["reply"] if k in done else None)
        items = [JudgeItem(instructions[k[2]], prompts[k], replies[k]) for k in keys]
        records = []
        for k, item, (success, error) in zip(keys, items, judge_safely(judge, items)):
            records.append(
                {
                    "setting": k[0],
                    "jailbreak": k[1],
                    "index": k[2],
                    "instruction": item.instruction,
                    "prompt": item.prompt.text,
                    "reply": item.reply,
                    "success": success,
                    "error": error,
                    "coherent": coherent(item.reply) if item.reply is not None else None,
                    **judge_details(judge, item),
                }
            )
        done.update({(r["setting"], r["jailbreak"], r["index"]): r for r in records})
        if path is not None:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
                fh.flush()
                os.fsync(fh.fileno())
        bar.update(len(keys))
    bar.close()
    meta = {**header, "settings": [s.name for s in settings], "jailbreaks": [jailbreak_name(j) for j in jbs]}
    return AttackReport([done[k] for k in prompts], meta)


def _stored_prompt(template: RoleTemplate, record: dict) -> ChatPrompt:
    """A stored prompt re-tokenized with its user text (between the setting's template pieces) kept plain text."""
    text = record["prompt"]
    head, tail = perturbed_pieces(template, "", get_setting(record["setting"]))
    if not (text.startswith(head) and text.endswith(tail) and len(text) > len(head) + len(tail)):
        raise HarmlensError(
            f"stored prompt {record['index']} does not match the model's template for {record['setting']}"
        )
    end = len(text) - len(tail)
    ids, t_inst = tokenize_prompt(template.tokenizer, text, end, [(len(head), end)])
    return ChatPrompt(record["instruction"], text, tuple(ids), t_inst, tuple(range(t_inst + 1, len(ids))))


def rejudge(report: AttackReport, judge: str | Judge, model=None) -> AttackReport:
    """The same replies judged again by another judge (no generation), e.g. to compare phrase lists."""
    judge = get_judge(judge, model)
    if not judge.needs_reply and model is None:
        raise HarmlensError(f"judge {judge.name} reads the model, pass model=")
    items = []
    template = None
    if model is not None and not judge.needs_reply:
        template = role_template(
            model, system=report.meta.get("system"), strip_system=bool(report.meta.get("strip_system"))
        )
    for r in report.records:
        prompt = (
            _stored_prompt(template, r)
            if template is not None
            else ChatPrompt(r["instruction"], r["prompt"], (0, 0), 0, (1,))
        )
        items.append(JudgeItem(r["instruction"], prompt, r["reply"]))
    records = [
        {**{k: v for k, v in r.items() if not k.startswith("judge_")}, "success": success, "error": error}
        | judge_details(judge, item)
        for r, item, (success, error) in zip(report.records, items, judge_safely(judge, items))
    ]
    return AttackReport(records, {**report.meta, "judge": judge.name})
