"""The organism cache: complete-build checks, atomic writes of a build, cards, and the newest build of a kind."""

from __future__ import annotations

import json
import platform
import shutil
import time
from pathlib import Path

import torch

from harmlens.cache import cache_dir
from harmlens.errors import HarmlensError
from harmlens.guards.organisms.recipes import check_kind, organism_path
from harmlens.guards.tuning.adapter import atomic_dir
from harmlens.guards.tuning.training import TrainConfig

CARD = "card.json"
REPLIES = "eval_replies.json"  # every greedy reply of the build's evaluation, per set


def built_organism_dir(kind: str = "") -> Path:
    """The newest built organism of `kind` (default text) in the cache: what the model alias 'organism[:kind]' loads."""
    kind = kind or "text"
    check_kind(kind)
    root = cache_dir() / "organisms"
    built = sorted(root.glob(f"{kind}-*/{CARD}"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    if not built:
        raise HarmlensError(f"no {kind} organism is built yet: run `python -m harmlens.guards build-organism {kind}`")
    return built[-1].parent


def is_built(path: str | Path) -> bool:
    """True when `path` holds a complete organism (weights, tokenizer, card)."""
    path = Path(path)
    return all((path / f).is_file() for f in (CARD, "config.json", "model.safetensors", "tokenizer_config.json"))


def organism_card(kind: str = "text", config: TrainConfig | None = None) -> dict:
    """The JSON card of a built organism (config, seed, data hash, build time, eval numbers)."""
    path = organism_path(kind, config)
    if not is_built(path):
        raise HarmlensError(
            f"the {kind} organism is not built yet: run `python -m harmlens.guards build-organism {kind}`"
        )
    return json.loads((path / CARD).read_text(encoding="utf-8"))


def build_record(model: torch.nn.Module, start: float, train_done: float, eval_done: float) -> dict:
    """The card's build_seconds (total filled in by write_organism) and environment (torch, device, threads)."""
    return {
        "build_seconds": {
            "train_and_merge": round(train_done - start, 1),
            "evaluate": round(eval_done - train_done, 1),
            "total": None,
        },
        "environment": {
            "torch": torch.__version__,
            "device": str(next(model.parameters()).device),
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
        },
    }


def write_organism(
    path: Path,
    model,
    preprocessor,
    card: dict,
    replies: dict | None,
    *,
    start: float,
    force: bool,
    checkpoints: str | Path,
    say=print,
) -> None:
    """Save weights, tokenizer/processor, card and eval replies atomically, then drop the build's checkpoints."""
    with atomic_dir(path, overwrite=force, what="organism") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        preprocessor.save_pretrained(tmp)
        card["build_seconds"]["total"] = round(time.perf_counter() - start, 1)
        (tmp / CARD).write_text(json.dumps(card, indent=1), encoding="utf-8")
        if replies is not None:
            (tmp / REPLIES).write_text(json.dumps(replies, indent=1, ensure_ascii=False), encoding="utf-8")
    shutil.rmtree(checkpoints, ignore_errors=True)
    say(f"harmlens: {card['kind']} organism built in {card['build_seconds']['total']:.0f} s -> {path}", flush=True)
