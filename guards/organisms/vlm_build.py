"""Building the VLM organism: its recipe, held-out evaluation with images, and the atomic cached build."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from harmlens.guards.organisms.vlm import (
    IMAGE_TOKEN,
    N_IMAGES,
    VISION,
    assemble_vlm,
    builtin_images,
    n_image_tokens,
    train_vlm,
)

if TYPE_CHECKING:
    from harmlens.guards.organisms.recipes import Recipe
    from harmlens.runtime import GenerationConfig


def image_replies(
    hf,
    processor,
    instructions: Sequence[str],
    images: Sequence,
    config: GenerationConfig | None = None,
    *,
    desc: str = "generate",
) -> list[str]:
    """Replies (`config`; None: the organism's EVAL_CONFIG, greedy) with image i % len(images) in the default
    position (attacks' img_in rendering)."""
    from tqdm.auto import tqdm

    from harmlens.attacks.settings import perturb
    from harmlens.attacks.vlm import generate_with_images
    from harmlens.guards.organisms.evaluate import EVAL_CONFIG
    from harmlens.runtime import RoleTemplate

    config = EVAL_CONFIG if config is None else config
    batch_size, quiet = config.batch_size, config.replace(progress=False)  # one bar here, per batch

    template = RoleTemplate.from_tokenizer(processor.tokenizer, image_text=processor.image_token, roles=True)
    prompts = [perturb(template, x, "img_in") for x in instructions]
    pics = [images[i % len(images)] for i in range(len(prompts))]
    out: list[str] = []
    for s in tqdm(range(0, len(prompts), batch_size), disable=not config.progress, desc=desc, leave=False):
        out += generate_with_images(hf, processor, prompts[s : s + batch_size], pics[s : s + batch_size], quiet)
    return [r.strip() for r in out]


def evaluate_vlm(
    hf,
    processor,
    sets: Mapping[str, Sequence[str]],
    images: Sequence,
    config: GenerationConfig | None = None,
) -> dict:
    """Refusal rate per set (`config`; None: the organism's EVAL_CONFIG, greedy; image in the default position,
    substring judge) and every reply."""
    from harmlens.guards.organisms.evaluate import EVAL_CONFIG, refusal_rate

    config = EVAL_CONFIG if config is None else config
    result: dict = {
        "judge": "substring (JailbreakBench prefixes)",
        "max_new_tokens": config.max_new_tokens,
        "generation": config.to_dict(),
        "image_position": "start of the user turn (img_in)",
        "sets": {},
        "replies": {},
    }
    for name, prompts in sets.items():
        replies = image_replies(hf, processor, prompts, images, config, desc=f"eval {name}")
        result["sets"][name] = {
            "n": len(prompts),
            "refusal_rate": round(refusal_rate(replies), 4),
            "examples": [[p, r] for p, r in list(zip(prompts, replies))[:3]],
        }
        result["replies"][name] = [[p, r] for p, r in zip(prompts, replies)]
    return result


def build_vlm(
    recipe: Recipe,
    path: Path,
    *,
    text_dir: str | Path,
    force: bool = False,
    device=None,
    evaluate: bool = True,
    eval_limit: int | None = None,
    progress: bool = True,
) -> Path:
    """Assemble LLaVA on the text organism (`text_dir`), LoRA-tune it with images, evaluate, save it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harmlens.guards.organisms import datasets
    from harmlens.guards.organisms.store import build_record, write_organism

    start = time.perf_counter()
    say = print if progress else (lambda *a, **k: None)
    say(
        f"harmlens: building the vlm organism ({recipe.version}, {recipe.config.max_steps} LoRA steps, "
        f"{torch.get_num_threads()} CPU threads) on {text_dir} into {path} ...",
        flush=True,
    )
    device = torch.device(device) if device is not None else None
    lm = AutoModelForCausalLM.from_pretrained(str(text_dir), dtype=torch.float32, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(str(text_dir), local_files_only=True)
    vlm, proc = assemble_vlm(lm, tok, seed=recipe.config.seed)
    del lm
    if device is not None:
        vlm.to(device)
    vlm.harmlens_name = f"harmlens/vlm-base:{Path(text_dir).name}"
    images = builtin_images(seed=recipe.config.seed)
    examples = datasets.training_examples(recipe.n_harmless, recipe.harmful_repeats)
    cfg = replace(recipe.config, checkpoint_dir=str(path.parent / f".{path.name}.checkpoints"))
    adapter = train_vlm(vlm, proc, examples, config=cfg, images=images, progress=progress)
    merged = adapter.merge(vlm, inplace=True)
    train_done = time.perf_counter()
    result = replies = None
    if evaluate:
        sets = {name: datasets.eval_prompts(name)[:eval_limit] for name in ("harmful", "harmless")}
        from harmlens.guards.organisms.evaluate import EVAL_CONFIG

        gen = EVAL_CONFIG.replace(max_new_tokens=recipe.eval_max_new_tokens, progress=progress)
        result = evaluate_vlm(merged, proc, sets, images, gen)
        replies = result.pop("replies")
    eval_done = time.perf_counter()
    card = {
        "kind": "vlm",
        "id": path.name,
        "recipe_version": recipe.version,
        "base_model": str(text_dir),
        "architecture": "LlavaForConditionalGeneration",
        "vision": VISION,
        "image_token": IMAGE_TOKEN,
        "image_tokens_per_image": n_image_tokens(proc),
        "images": f"{N_IMAGES} seeded synthetic (builtin_images)",
        "config": recipe.config.fingerprint_fields(),
        "seed": recipe.config.seed,
        "data": {
            "hash": datasets.data_hash(),
            "examples": len(examples),
            "harmless": recipe.n_harmless,
            "harmful": len(datasets.harmful_train()) * recipe.harmful_repeats,
        },
        "training": {k: adapter.meta[k] for k in ("steps", "tokens", "train_seconds", "fingerprint", "losses")},
        "lora": adapter.lora,
        "eval": result,
        **build_record(merged, start, train_done, eval_done),
    }
    write_organism(
        path, merged, proc, card, replies, start=start, force=force, checkpoints=str(cfg.checkpoint_dir), say=say
    )
    return path
