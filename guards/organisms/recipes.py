"""What each organism is built from (recipes) and where it is cached (its id: a hash of everything that matters)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from harmlens.cache import cache_dir
from harmlens.errors import HarmlensError
from harmlens.guards.organisms import datasets
from harmlens.guards.organisms.vlm import IMAGE_TOKEN, N_IMAGES, VISION
from harmlens.guards.tuning.training import TrainConfig
from harmlens.runtime import EMBEDDED_NAME

KINDS = ("text", "vlm")


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


# The VLM organism's recipe: a short LoRA run on top of the text organism, images in the default position.
VLM_RECIPE = Recipe(
    version="vlm-v1",
    n_harmless=1000,
    harmful_repeats=2,
    eval_max_new_tokens=48,
    base_model="organism:text",
    config=TrainConfig(
        lora_r=16,
        lora_alpha=32.0,
        lora_dropout=0.0,
        layers=tuple(range(6, 30)),
        lr=5e-4,
        schedule="cosine",
        warmup=4,
        batch_size=8,
        max_steps=50,
        max_response_tokens=32,
        max_length=128,
        first_token_weight=10.0,
        seed=0,
        checkpoint_every=10,
    ),
)


def check_kind(kind: str) -> None:
    """Refuse an unknown organism kind with a one-line error."""
    if kind not in KINDS:
        raise HarmlensError(f"unknown organism kind {kind!r}; choose from {', '.join(KINDS)}")


def recipe_for(kind: str, config: TrainConfig | None = None) -> Recipe:
    """The recipe an organism of `kind` is built from, with `config` replacing its training config."""
    check_kind(kind)
    base = VLM_RECIPE if kind == "vlm" else TEXT_RECIPE
    return base if config is None else replace(base, config=config)


def organism_id(kind: str = "text", config: TrainConfig | None = None) -> str:
    """Folder name: '<version>-<hash of config, data mix, base model and shipped data>'."""
    r = recipe_for(kind, config)
    # the VLM's id also depends on the text organism, the vision tower and the images
    extra = [organism_id("text"), VISION, N_IMAGES, IMAGE_TOKEN] if kind == "vlm" else []
    key = json.dumps(
        [r.config.fingerprint_fields(), r.n_harmless, r.harmful_repeats, r.base_model, datasets.data_hash(), *extra],
        sort_keys=True,
    )
    return f"{r.version}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def organism_path(kind: str = "text", config: TrainConfig | None = None) -> Path:
    """Where the organism is (or will be) cached: cache_dir()/organisms/<id>/."""
    return cache_dir() / "organisms" / organism_id(kind, config)
