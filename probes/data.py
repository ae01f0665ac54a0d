"""Read prompt files in the formats of public benchmarks, and the built-in prompt sets shipped with harmlens."""

from __future__ import annotations

import csv
import json
from importlib import resources
from pathlib import Path

from harmlens.errors import HarmlensError

PROMPT_KEYS = ("instruction", "bad_q", "prompt", "goal", "behavior", "Behavior", "question", "Question", "text")
BUILTIN_SETS = ("harmful", "harmless")


def _pick(record, where: str) -> str:
    """The prompt string of one record (a string, or a dict with a known prompt key)."""
    if isinstance(record, str):
        return record
    if isinstance(record, dict):
        for key in PROMPT_KEYS:
            if isinstance(record.get(key), str):
                return record[key]
        raise HarmlensError(f"{where}: record has none of the prompt keys {', '.join(PROMPT_KEYS)}")
    raise HarmlensError(f"{where}: expected a string or an object, got {type(record).__name__}")


def _read_json(path: Path, text: str) -> list[str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HarmlensError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise HarmlensError(f"{path}: JSON nested too deeply") from None
    if isinstance(data, dict):
        data = next((v for v in data.values() if isinstance(v, list)), None)
    if not isinstance(data, list):
        raise HarmlensError(f"{path}: JSON must be a list of prompts or records")
    return [_pick(r, f"{path} item {i}") for i, r in enumerate(data)]


def _read_jsonl(path: Path, text: str) -> list[str]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append(_pick(json.loads(line), f"{path}:{n}"))
            except json.JSONDecodeError as exc:
                raise HarmlensError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            except RecursionError:
                raise HarmlensError(f"{path}:{n}: JSON nested too deeply") from None
    return out


def _read_csv(path: Path, text: str) -> list[str]:
    rows = list(csv.DictReader(text.splitlines()))
    if not rows:
        return []
    key = next((k for k in PROMPT_KEYS if k in rows[0]), None)
    if key is None:
        raise HarmlensError(f"{path}: CSV has no prompt column (one of {', '.join(PROMPT_KEYS)})")
    return [row[key] for row in rows]


_READERS = {".json": _read_json, ".jsonl": _read_jsonl, ".csv": _read_csv, ".txt": None}


def read_prompts(path: str | Path, *, limit: int | None = None) -> list[str]:
    """Prompts from a JSON list, JSONL, CSV with a prompt column, or plain text (one per line)."""
    path = Path(path)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise HarmlensError(f"limit must be a positive integer, got {limit!r}")
    if not path.is_file():
        raise HarmlensError(f"prompt file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in _READERS:
        raise HarmlensError(f"{path}: unknown prompt file format {suffix or '(none)'}; use .json, .jsonl, .csv or .txt")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a leading UTF-8 BOM is not part of the first prompt
    except UnicodeDecodeError:
        raise HarmlensError(f"{path}: not UTF-8 text") from None
    reader = _READERS[suffix]
    prompts = [line for line in text.splitlines() if line.strip()] if reader is None else reader(path, text)
    prompts = [p for p in prompts if p.strip()] if reader is None else prompts
    if not prompts:
        raise HarmlensError(f"{path}: no prompts in file")
    return prompts[:limit] if limit is not None else prompts


def builtin_prompts(name: str, split: str | None = None, *, limit: int | None = None) -> list[str]:
    """A prompt set shipped with harmlens: 'harmful' (Arditi splits, MIT) or 'harmless' (Alpaca, CC BY-NC)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise HarmlensError(f"limit must be a positive integer, got {limit!r}")
    if name not in BUILTIN_SETS:
        raise HarmlensError(f"unknown built-in prompt set {name!r}; choose from {', '.join(BUILTIN_SETS)}")
    records = json.loads(resources.files("harmlens.probes").joinpath(f"data/{name}.json").read_text(encoding="utf-8"))
    if split is not None:
        if split not in {r["split"] for r in records}:
            raise HarmlensError(f"built-in set {name!r} has no split {split!r}")
        records = [r for r in records if r["split"] == split]
    prompts = [r["instruction"] for r in records]
    return prompts[:limit] if limit is not None else prompts


def load_prompt_source(
    source: str | None, builtin: str, split: str | None = None, limit: int | None = None
) -> list[str]:
    """CLI helper: a file path, 'builtin:<name>[:<split>]', or None for the named built-in set."""
    if source is None:
        return builtin_prompts(builtin, split, limit=limit)
    if source.startswith("builtin:"):
        parts = source.split(":")
        return builtin_prompts(parts[1], parts[2] if len(parts) > 2 else split, limit=limit)
    return read_prompts(source, limit=limit)
