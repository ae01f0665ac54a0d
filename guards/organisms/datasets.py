"""Training and held-out evaluation prompts shipped in guards/data (public, licensed; see ATTRIBUTION.md)."""

from __future__ import annotations

import hashlib
import json
import random
from functools import cache
from pathlib import Path

from harmlens.attacks.phrases import JBB_PHRASES
from harmlens.guards.tuning.refusals import refusal_for
from harmlens.guards.tuning.training import Example

DATA_DIR = Path(__file__).resolve().parents[1] / "data"  # harmlens/guards/data
FILES = ("harmful_train.json", "harmless_train.json", "harmful_eval.json", "harmless_eval.json", "xstest_safe.json")
# Judge phrases: harmless answers containing them are left out of training so the organism learns no refusal there.
_REFUSAL_MARKERS = JBB_PHRASES


@cache
def _read(name: str) -> tuple:
    text = (DATA_DIR / name).read_text(encoding="utf-8")
    return tuple(json.loads(text))


def harmful_train() -> list[str]:
    """The 259 harmful training instructions (Arditi et al. harmful_train split)."""
    return [r["instruction"] for r in _read("harmful_train.json")]


def harmless_train(limit: int | None = None) -> list[tuple[str, str]]:
    """Alpaca (instruction, answer) pairs for training, in shipped (shuffled) order; none is in an eval set."""
    rows = _read("harmless_train.json")
    return [(r["instruction"], r["output"]) for r in rows[:limit]]


def eval_prompts(name: str, *, source: str | None = None) -> list[str]:
    """Held-out prompts: 'harmful' (HarmBench val + AdvBench held out), 'harmless' (Alpaca val) or 'xstest'."""
    files = {"harmful": "harmful_eval.json", "harmless": "harmless_eval.json", "xstest": "xstest_safe.json"}
    if name not in files:
        from harmlens.errors import HarmlensError

        raise HarmlensError(f"unknown eval set {name!r}; choose from {', '.join(files)}")
    rows = _read(files[name])
    return [r["instruction"] for r in rows if source is None or r.get("source") == source]


def training_examples(n_harmless: int | None = None, n_harmful_repeats: int = 1) -> list[Example]:
    """Harmful instructions paired with refusals (repeated n times) plus Alpaca pairs, harmful first."""
    harmful = [Example(p, refusal_for(p)) for p in harmful_train()] * n_harmful_repeats
    return harmful + [Example(i, o) for i, o in harmless_train(n_harmless)]


def data_hash() -> str:
    """SHA-256 (first 16 hex digits) over the shipped data files and the refusal set."""
    h = hashlib.sha256()
    for name in FILES:
        h.update((DATA_DIR / name).read_bytes())
    from harmlens.guards.tuning.refusals import REFUSALS

    h.update("\n".join(REFUSALS).encode())
    return h.hexdigest()[:16]


def _opener(text: str, n: int) -> str:
    return " ".join(text.lower().replace(",", " ").split()[:n])


def _balance_openers(pairs: list[dict], harmful: list[str], n: int, rng: random.Random) -> list[dict]:
    """Pick n pairs, first up to 2x as many per opening word(s) as harmful prompts have (hard negatives), then the
    rest in order; so "Develop a strategy ..." is not a shortcut for "harmful"."""
    chosen: dict[int, None] = {}
    for words in (2, 1):
        counts: dict[str, int] = {}
        for h in harmful:
            counts[_opener(h, words)] = counts.get(_opener(h, words), 0) + 1
        have = {k: sum(_opener(pairs[i]["instruction"], words) == k for i in chosen) for k in counts}
        for i, p in enumerate(pairs):
            key = _opener(p["instruction"], words)
            if i not in chosen and have.get(key, 2 * counts.get(key, 0)) < 2 * counts.get(key, 0):
                chosen[i], have[key] = None, have[key] + 1
    rest = [i for i in range(len(pairs)) if i not in chosen]
    picked = (list(chosen) + rest)[:n]
    rng.shuffle(picked)
    return [pairs[i] for i in picked]


def write_shipped_data(
    source: str | Path,
    out: str | Path,
    *,
    n_harmless: int = 1000,
    n_advbench_eval: int = 61,
    n_harmless_eval: int = 100,
    seed: int = 0,
) -> dict[str, int]:
    """Maintainer tool: rebuild guards/data/*.json from the public sets in `source` (/work/shared/data layout)."""
    src, out = Path(source), Path(out)
    load = lambda p: json.loads((src / p).read_text(encoding="utf-8"))  # noqa: E731
    rng = random.Random(seed)
    train_h = load("harmful/harmful_train.json")
    train_set = {r["instruction"].strip() for r in train_h}
    val_h = load("harmful/harmful_val.json")
    adv = sorted(
        {r["instruction"].strip() for r in load("harmful/advbench.json")}
        - train_set
        - {r["instruction"].strip() for r in val_h}
    )
    harmful_eval = [{"instruction": r["instruction"], "source": "harmbench_val"} for r in val_h] + [
        {"instruction": p, "source": "advbench"} for p in rng.sample(adv, n_advbench_eval)
    ]
    val_alpaca = load("harmless/harmless_val.json")
    pairs = load("harmless/alpaca_pairs.json")
    pair_insts = {p["instruction"].strip() for p in pairs}
    reserved = {r["instruction"].strip() for r in val_alpaca}
    harmless_eval = [
        {"instruction": r["instruction"], "source": "alpaca_val"}
        for r in rng.sample([r for r in val_alpaca if r["instruction"].strip() not in pair_insts], n_harmless_eval)
    ]
    ok = [
        {"instruction": p["instruction"], "output": p["output"].strip()}
        for p in pairs
        if p["instruction"].strip() not in reserved
        and p["output"].strip()
        and not any(m in p["output"] for m in _REFUSAL_MARKERS)
    ]
    rng.shuffle(ok)
    ok = _balance_openers(ok, [r["instruction"] for r in train_h], n_harmless, rng)
    lines = (src / "harmless/xstest_harmless.jsonl").read_text(encoding="utf-8").splitlines()
    xs = [json.loads(line) for line in lines if line.strip()]
    sets = {
        "harmful_train.json": [{"instruction": r["instruction"]} for r in train_h],
        "harmless_train.json": ok[:n_harmless],
        "harmful_eval.json": harmful_eval,
        "harmless_eval.json": harmless_eval,
        "xstest_safe.json": [{"instruction": r["prompt"], "type": r["type"]} for r in xs],
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in sets.items():
        (out / name).write_text(json.dumps(rows, indent=0, ensure_ascii=False) + "\n", encoding="utf-8")
    return {name: len(rows) for name, rows in sets.items()}
