"""Aligned "model organisms": the embedded SmolLM2 LoRA safety-tuned to refuse harmful requests; built once, cached."""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

from harmlens.guards.organisms import datasets
from harmlens.guards.organisms.recipes import Recipe, check_kind, organism_path, recipe_for
from harmlens.guards.organisms.store import CARD, build_record, is_built, write_organism
from harmlens.guards.organisms.vlm_build import build_vlm
from harmlens.guards.tuning.training import TrainConfig, train
from harmlens.runtime import load_hf, load_model


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
    recipe = recipe_for(kind, config)
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
        text_dir = build_organism("text", device=device, evaluate=False, progress=progress)
        return build_vlm(
            recipe,
            path,
            text_dir=text_dir,
            force=force,
            device=device,
            evaluate=evaluate,
            eval_limit=eval_limit,
            progress=progress,
        )
    start = time.perf_counter()
    say = print if progress else (lambda *a, **k: None)
    say(
        f"harmlens: building the {kind} organism ({recipe.version}, {recipe.config.max_steps} LoRA steps, "
        f"{torch.get_num_threads()} CPU threads) into {path} ...",
        flush=True,
    )
    hf, tok, base = load_hf(recipe.base_model, device=device, dtype=torch.float32)  # training stays float32
    hf.harmlens_name = base
    examples = datasets.training_examples(recipe.n_harmless, recipe.harmful_repeats)
    ckpt_dir = path.parent / f".{path.name}.checkpoints"
    cfg = replace(recipe.config, checkpoint_dir=str(ckpt_dir))
    adapter = train(hf, examples, config=cfg, tokenizer=tok, progress=progress)
    merged = adapter.merge(hf)
    train_done = time.perf_counter()
    result = None
    if evaluate:
        from harmlens.guards.organisms.evaluate import EVAL_CONFIG, evaluate_organism

        sets = {name: datasets.eval_prompts(name)[:eval_limit] for name in ("harmful", "harmless", "xstest")}
        gen = EVAL_CONFIG.replace(max_new_tokens=recipe.eval_max_new_tokens, progress=progress)
        result = evaluate_organism(merged, hf, tok, sets, gen)
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
        **build_record(hf, start, train_done, eval_done),
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


def _by_source(replies: list) -> dict:
    from harmlens.attacks.judges import is_refusal

    rows = {r["instruction"]: r.get("source") for r in datasets._read("harmful_eval.json")}
    out: dict = {}
    for prompt, reply in replies:
        out.setdefault(rows.get(prompt), []).append(is_refusal(reply))
    return {k: {"n": len(v), "refusal_rate": round(sum(v) / len(v), 4)} for k, v in out.items()}


def load_organism(
    kind: str = "text",
    *,
    rebuild: bool = False,
    device=None,
    config: TrainConfig | None = None,
    evaluate: bool = False,
    dtype=None,
):
    """The aligned organism as a TransformerBridge: built on first use (minutes, with a progress bar), then cached.
    A first-use build skips the held-out evaluation (5 more minutes on CPU) unless evaluate=True; the CLI
    `python -m harmlens.guards build-organism` evaluates by default."""
    check_kind(kind)
    path = organism_path(kind, config)
    if rebuild or not is_built(path):
        build_organism(kind, config, force=rebuild, device=device, evaluate=evaluate)
    if kind == "vlm":
        from harmlens.guards.organisms.vlm import load_vlm

        return load_vlm(path, device=device, dtype=dtype)  # processor at .processor
    model = load_model(str(path), device=device, dtype=dtype)
    model.harmlens_organism = json.loads((path / CARD).read_text(encoding="utf-8"))
    return model
