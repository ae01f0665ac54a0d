"""What every generation engine shares: the generation settings (set once), the prefill read and the Backend protocol."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from harmlens import validate
from harmlens.errors import HarmlensError
from harmlens.runtime.token_prompts import Prompts

CACHES = ("dynamic", "static")


@dataclass(frozen=True)
class GenerationConfig:
    """How to generate, set once and passed to every engine: greedy unless do_sample; `seed` seeds each batch.

    cache='static' preallocates the KV cache (HF engine), and compile=True also compiles the decode step with
    torch.compile there (a GPU path; hooks stay active: see docs/engines.md); vLLM manages its own cache.
    """

    max_new_tokens: int = 64
    batch_size: int = 16
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    progress: bool = True
    cache: str = "dynamic"
    compile: bool = False

    def __post_init__(self) -> None:
        validate.count(self.max_new_tokens, "max_new_tokens")
        validate.count(self.batch_size, "batch_size")
        validate.count(self.seed, "seed", minimum=0)
        for flag in ("do_sample", "progress", "compile"):
            if not isinstance(getattr(self, flag), bool):
                raise HarmlensError(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        temperature = validate.finite(self.temperature, "temperature", minimum=0.0)
        if self.do_sample and temperature == 0:
            raise HarmlensError("temperature must be positive when sampling (do_sample=True), got 0")
        validate.finite(self.top_p, "top_p", minimum=0.0, maximum=1.0, open_min=True)
        if self.cache not in CACHES:
            raise HarmlensError(f"cache must be one of {', '.join(CACHES)}, got {self.cache!r}")
        if self.compile and self.cache != "static":
            raise HarmlensError("compile=True needs cache='static' (a compiled decode step needs fixed shapes)")
        for name in ("max_new_tokens", "batch_size", "seed"):  # '8' from a config file becomes 8
            object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "top_p", float(self.top_p))

    def replace(self, **changes: Any) -> GenerationConfig:
        """A copy with some fields changed (validated); unknown field names are one-line errors."""
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - fields)
        if unknown:
            raise HarmlensError(f"unknown generation setting(s) {unknown}; choose from {', '.join(sorted(fields))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (recorded in run headers)."""
        return dataclasses.asdict(self)


DEFAULT_CONFIG = GenerationConfig()


def generation_config(config: GenerationConfig | Mapping | None = None, **overrides: Any) -> GenerationConfig:
    """The config to use: `config` (a GenerationConfig, a dict of its fields, or None for the defaults) with keyword
    overrides applied, as transformers' generate(generation_config=..., **kwargs) does."""
    if config is None:
        base = DEFAULT_CONFIG
    elif isinstance(config, GenerationConfig):
        base = config
    elif isinstance(config, Mapping):
        base, overrides = DEFAULT_CONFIG, {**config, **overrides}
    else:
        raise HarmlensError(f"config must be a GenerationConfig, a dict or None, got {type(config).__name__}")
    return base.replace(**overrides) if overrides else base


@dataclass(frozen=True)
class PrefillRead:
    """What a reader (a guard) takes from the prefill that generation runs anyway, at no extra forward pass.

    The engine reads the residual at `layers` (0..n_layers, n_layers = the final residual) and, per prompt,
    `positions(i)` (token indices in prompt i as the engine feeds it: the processor-expanded ids for an image
    prompt), then calls `decide(indices, acts)` once per group of prompts whose prefill is done: acts[k] is
    [len(layers), len(positions(i)), d_model] float32 for prompt indices[k], or None where the engine could not
    read it. `decide` answers, per prompt, whether to stop it now (its reply comes back empty).
    """

    layers: tuple[int, ...]
    positions: Callable[[int], Sequence[int]]
    decide: Callable[[Sequence[int], list[torch.Tensor | None]], Sequence[bool]]


@runtime_checkable
class Backend(Protocol):
    """A generation engine: rendered prompts (or token ids) in, new token ids or reply texts out, in prompt order."""

    name: str

    def generate_ids(
        self,
        prompts: Prompts,
        config: GenerationConfig = DEFAULT_CONFIG,
        *,
        images: Sequence | None = None,
        read: PrefillRead | None = None,
    ) -> list[list[int]]:
        """New token ids per prompt, cut before the first stop token."""
        ...

    def generate(
        self, prompts: Prompts, config: GenerationConfig = DEFAULT_CONFIG, *, images: Sequence | None = None
    ) -> list[str]:
        """Reply texts (new tokens only, special tokens dropped)."""
        ...
