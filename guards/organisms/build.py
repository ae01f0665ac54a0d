"""Aligned "model organisms": the embedded SmolLM2 LoRA safety-tuned to refuse harmful requests; built once, cached."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from harmlens.cache import cache_dir
from harmlens.errors import HarmlensError
from harmlens.guards.organisms import datasets
from harmlens.guards.tuning.adapter import atomic_dir
from harmlens.guards.tuning.training import TrainConfig, train
from harmlens.probes.loading import EMBEDDED_NAME, load_hf, load_model

KINDS = ("text", "vlm")
CARD = "card.json"
REPLIES = "eval_replies.json"  # every greedy reply of the build's evaluation, per set


@dataclass(frozen=True)
class Recipe:
    """What an organism is built from: the training config and how the shipped data are mixed."""

    version: str  # bumped when the build procedure changes in a way the config does not show
    config: TrainConfig
    n_harmless: int  # Alpaca pairs used (of the 800 shipped)
    harmful_repeats: int = 1  # copies of the 259 harmful -> refusal pairs
    eval_max_new_tokens: int = 48  # greedy reply length in the build's evaluation
    base_model: str = "HuggingFaceTB/" + EMBEDDED_NAME
    notes: dict = field(default_factory=dict, compare=False)


# The text organism's recipe (see the card's "recipe" and ATTRIBUTION.md for the data).
TEXT_RECIPE = Recipe(
    version="text-v1",
    config=TrainConfig(
        lora_r=16,
        lora_alpha=32.0,
        lora_dropout=0.0,
        layers=tuple(range(6, 30)),
        lr=1e-3,
        schedule="cosine",
        warmup=10,
        batch_size=8,
        max_steps=200,
        max_response_tokens=32,
        max_length=112,
        first_token_weight=10.0,
        seed=0,
        checkpoint_every=25,
    ),
    n_harmless=1000,
)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise HarmlensError(f"unknown organism kind {kind!r}; choose from {', '.join(KINDS)}")


def _recipe(kind: str, config: TrainConfig | None) -> Recipe:
    _check_kind(kind)
    if kind == "vlm":
        from harmlens.guards.organisms.vlm_build import vlm_recipe

        base = vlm_recipe()
    else:
        base = TEXT_RECIPE
    return base if config is None else replace(base, config=config)


def organism_id(kind: str = "text", config: TrainConfig | None = None) -> str:
    """Folder name: '<version>-<hash of config, data mix, base model and shipped data>'."""
    r = _recipe(kind, config)
    extra = []
    if kind == "vlm":
        from harmlens.guards.organisms.vlm_build import vlm_key

        extra = vlm_key()
    key = json.dumps(
        [r.config.fingerprint_fields(), r.n_harmless, r.harmful_repeats, r.base_model, datasets.data_hash(), *extra],
        sort_keys=True,
    )
    return f"{r.version}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def organism_path(kind: str = "text", config: TrainConfig | None = None) -> Path:
    """Where the organism is (or will be) cached: cache_dir()/organisms/<id>/."""
    return cache_dir() / "organisms" / organism_id(kind, config)


def built_organism_dir(kind: str = "") -> Path:
    """The newest built organism of `kind` (default text) in the cache: what the model alias 'organism[:kind]' loads."""
    kind = kind or "text"
    _check_kind(kind)
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


def build_organism(
    kind: str = "text",
    config: TrainConfig | None = None,
    *,
    out: str | Path | None = None,
    force: bool = False,
    device=None,
    evaluate: bool = True,
    eval_limit: int | None = None,
    eval_max_new_tokens: int | None = None,
    progress: bool = True,
) -> Path:
    """Train, merge, evaluate and save the organism atomically (resumes an interrupted build); returns its folder.
    eval_limit / eval_max_new_tokens shrink the evaluation (quick tests; the card records them)."""
    recipe = _recipe(kind, config)
    path = Path(out) if out is not None else organism_path(kind, config)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build per folder; a waiting process then finds it built
        if is_built(path) and not force:
            return path
        if eval_max_new_tokens is not None:
            recipe = replace(recipe, eval_max_new_tokens=eval_max_new_tokens)
        return _build(
            kind, recipe, path, force=force, device=device, evaluate=evaluate, eval_limit=eval_limit, progress=progress
        )


def build_threads() -> int:
    """CPU threads for a build: torch's default less the cores other processes keep busy. On a shared machine
    spinning OpenMP threads make 2-thread training ~4x slower than 1 thread; results are bitwise the same."""
    n = torch.get_num_threads()
    try:
        busy = os.getloadavg()[0]
    except (OSError, AttributeError):
        return n
    return max(1, min(n, int((os.cpu_count() or n) - busy + 0.5)))


def _build(
    kind: str,
    recipe: Recipe,
    path: Path,
    *,
    force: bool,
    device,
    evaluate: bool,
    eval_limit: int | None,
    progress: bool,
) -> Path:
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(build_threads())
        return _build_inner(
            kind, recipe, path, force=force, device=device, evaluate=evaluate, eval_limit=eval_limit, progress=progress
        )
    finally:
        torch.set_num_threads(threads)


def _build_inner(
    kind: str,
    recipe: Recipe,
    path: Path,
    *,
    force: bool,
    device,
    evaluate: bool,
    eval_limit: int | None,
    progress: bool,
) -> Path:
    if kind == "vlm":
        from harmlens.guards.organisms.vlm_build import build_vlm

        return build_vlm(
            recipe, path, force=force, device=device, evaluate=evaluate, eval_limit=eval_limit, progress=progress
        )
    start = time.perf_counter()
    say = print if progress else (lambda *a, **k: None)
    say(
        f"harmlens: building the {kind} organism ({recipe.version}, {recipe.config.max_steps} LoRA steps, "
        f"{torch.get_num_threads()} CPU threads) into {path} ...",
        flush=True,
    )
    hf, tok, base = load_hf(recipe.base_model, device=device)
    hf.harmlens_name = base
    examples = datasets.training_examples(recipe.n_harmless, recipe.harmful_repeats)
    ckpt_dir = path.parent / f".{path.name}.checkpoints"
    cfg = replace(recipe.config, checkpoint_dir=str(ckpt_dir))
    adapter = train(hf, examples, config=cfg, tokenizer=tok, progress=progress)
    merged = adapter.merge(hf)
    train_done = time.perf_counter()
    result = None
    if evaluate:
        from harmlens.guards.organisms.evaluate import evaluate_organism

        sets = {name: datasets.eval_prompts(name)[:eval_limit] for name in ("harmful", "harmless", "xstest")}
        result = evaluate_organism(merged, hf, tok, sets, max_new_tokens=recipe.eval_max_new_tokens, progress=progress)
        replies = result.pop("replies")
        result["sets"]["harmful"]["by_source"] = _by_source(replies["harmful"])
    eval_done = time.perf_counter()
    card = {
        "kind": kind,
        "id": path.name,
        "recipe_version": recipe.version,
        "base_model": base,
        "config": recipe.config.fingerprint_fields(),
        "seed": recipe.config.seed,
        "data": {
            "hash": datasets.data_hash(),
            "harmful": len(datasets.harmful_train()) * recipe.harmful_repeats,
            "harmless": recipe.n_harmless,
            "examples": len(examples),
        },
        "training": {k: adapter.meta[k] for k in ("steps", "tokens", "train_seconds", "fingerprint")}
        | {
            "final_loss": sum(adapter.meta["losses"][-10:]) / min(10, len(adapter.meta["losses"])),
            "losses": adapter.meta["losses"],
        },
        "lora": adapter.lora,
        "eval": result,
        "build_seconds": {
            "train_and_merge": round(train_done - start, 1),
            "evaluate": round(eval_done - train_done, 1),
            "total": None,
        },
        "environment": {
            "torch": torch.__version__,
            "device": str(next(hf.parameters()).device),
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
        },
    }
    write_organism(
        path,
        merged,
        tok,
        card,
        replies if result is not None else None,
        start=start,
        force=force,
        checkpoints=ckpt_dir,
        say=say,
    )
    return path


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


def _by_source(replies: list) -> dict:
    from harmlens.attacks.judges import is_refusal

    rows = {r["instruction"]: r.get("source") for r in datasets._read("harmful_eval.json")}
    out: dict = {}
    for prompt, reply in replies:
        out.setdefault(rows.get(prompt), []).append(is_refusal(reply))
    return {k: {"n": len(v), "refusal_rate": round(sum(v) / len(v), 4)} for k, v in out.items()}


def load_organism(
    kind: str = "text", *, rebuild: bool = False, device=None, config: TrainConfig | None = None, evaluate: bool = False
):
    """The aligned organism as a TransformerBridge: built on first use (minutes, with a progress bar), then cached.
    A first-use build skips the held-out evaluation (5 more minutes on CPU) unless evaluate=True; the CLI
    `python -m harmlens.guards build-organism` evaluates by default."""
    _check_kind(kind)
    path = organism_path(kind, config)
    if rebuild or not is_built(path):
        build_organism(kind, config, force=rebuild, device=device, evaluate=evaluate)
    if kind == "vlm":
        from harmlens.guards.organisms.vlm import load_vlm

        return load_vlm(path, device=device)  # processor at .processor
    model = load_model(str(path), device=device)
    model.harmlens_organism = json.loads((path / CARD).read_text(encoding="utf-8"))
    return model
