"""Read prompt files in the formats of public benchmarks (records or bare prompts), and harmlens's built-in sets."""

from __future__ import annotations

import csv
import io
import json
from importlib import resources
from pathlib import Path

from harmlens.errors import HarmlensError
from harmlens.probes.records import PROMPT_KEYS, PromptRecord, layout_of, parse_row

BUILTIN_SETS = ("harmful", "harmless")


def _records(items: list, where: str) -> list[PromptRecord]:
    """Records of a JSON/JSONL list; strings and objects, or objects of two benchmark layouts, may not be mixed."""
    out: list[PromptRecord] = []
    first: tuple[str, str] | None = None
    for label, item in items:
        if isinstance(item, str):
            kind, record = "plain string", PromptRecord(item, benchmark="plain")
        elif isinstance(item, dict):
            kind, record = parse_row(item, f"{where} {label}")
        else:
            raise HarmlensError(f"{where} {label}: expected a string or an object, got {type(item).__name__}")
        if first is None:
            first = (kind, label)
        elif kind != first[0]:
            raise HarmlensError(
                f"{where}: mixed record types: {first[1]} is {first[0]} but {label} is {kind}; one layout per file"
            )
        out.append(record)
    return out


def _read_json(path: Path, text: str) -> list[PromptRecord]:
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
    return _records([(f"item {i}", r) for i, r in enumerate(data)], str(path))


def _read_jsonl(path: Path, text: str) -> list[PromptRecord]:
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                items.append((f"line {n}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise HarmlensError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            except RecursionError:
                raise HarmlensError(f"{path}:{n}: JSON nested too deeply") from None
    return _records(items, str(path))


def _read_csv(path: Path, text: str) -> list[PromptRecord]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = [c for c in (reader.fieldnames or []) if c is not None]
    layout = layout_of({c.strip().lower() for c in columns})
    if layout is None:
        raise HarmlensError(
            f"{path}: unknown CSV layout with columns {', '.join(columns) or '(none)'}; expected a known benchmark "
            f"header or a prompt column ({', '.join(PROMPT_KEYS)})"
        )
    return [parse_row(row, f"{path} row {n}", layout)[1] for n, row in enumerate(reader, 2)]


_READERS = {".json": _read_json, ".jsonl": _read_jsonl, ".csv": _read_csv, ".txt": None}


def read_records(path: str | Path, *, limit: int | None = None) -> list[PromptRecord]:
    """Benchmark records from JSON, JSONL, CSV (layouts in harmlens.probes.records) or plain text (one per line)."""
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
    if reader is None:
        records = [PromptRecord(line, benchmark="plain") for line in text.splitlines() if line.strip()]
    else:
        records = reader(path, text)
    if not records:
        raise HarmlensError(f"{path}: no prompts in file")
    return records[:limit] if limit is not None else records


def read_prompts(path: str | Path, *, limit: int | None = None) -> list[str]:
    """The prompts of read_records(path): what the model is asked (HarmBench context included)."""
    return [r.prompt for r in read_records(path, limit=limit)]


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
