"""The main job's typed settings, shared by `python -m harmlens.guards main` and code."""

from __future__ import annotations

from dataclasses import dataclass

from harmlens.errors import HarmlensError
from harmlens.runtime import BACKENDS, GenerationConfig, resolve_backend

STEPS = ("organism", "directions", "attacks", "guard", "adversarial")
TRAIN_JAILBREAKS = ("prefix_injection", "refusal_suppression", "evil_confidant", "payload_splitting")  # adversarial mix
EVAL_JAILBREAKS = ("style_injection", "few_shot_json")  # the two strongest on the organism; never trained on


JOB_GENERATION = GenerationConfig(max_new_tokens=32, batch_size=32, progress=False)  # the main job's tables
EVAL_GENERATION = GenerationConfig(max_new_tokens=32, batch_size=16)  # adversarial-train's before/after tables


@dataclass(frozen=True)
class MainJobSettings:
    """What the main job runs: which steps, on which model, with how many held-out prompts."""

    n: int = 32  # held-out harmful/harmless prompts per evaluation
    jailbreaks: tuple[str, ...] = EVAL_JAILBREAKS  # text jailbreaks of the attack table ('all' = the 7 named)
    steps: tuple[str, ...] = STEPS  # run in STEPS order whatever the order given here
    device: str | None = None  # cpu or cuda (None: cuda when available)
    model: str = "organism"  # what the steps after `organism` read: organism, base, or a model folder / Hub name
    n_directions: int = 128  # harmful/harmless training prompts per class for the directions (Arditi et al.'s 128)
    backend: str = "auto"  # generation of the attack and evaluation tables: hf, vllm, or auto (vllm when installed)
    # how those tables generate: 32 new tokens (one attack serves the attack table and the before/after tables),
    # 32 prompts a batch (1.3x faster than 16 on 2 CPU cores), greedy, no progress bars (the job prints its steps)
    generation: GenerationConfig = JOB_GENERATION

    def __post_init__(self) -> None:
        for name in ("jailbreaks", "steps"):  # a comma string is accepted as code shorthand
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, tuple(v.strip() for v in value.split(",") if v.strip()))
        unknown = sorted(set(self.steps) - set(STEPS))
        if unknown:
            raise HarmlensError(f"unknown step(s) {unknown}; choose from {', '.join(STEPS)}")
        sizes = {k: getattr(self, k) for k in ("n", "n_directions")}
        if any(not isinstance(v, int) or v < 1 for v in sizes.values()):
            raise HarmlensError(f"{', '.join(sizes)} must be positive integers (got {sizes})")
        if not self.jailbreaks:
            raise HarmlensError("the attack table needs at least one jailbreak")
        if self.backend not in BACKENDS:
            raise HarmlensError(f"unknown generation backend {self.backend!r}; choose from {', '.join(BACKENDS)}")
        if not isinstance(self.generation, GenerationConfig):
            raise HarmlensError(f"generation must be a GenerationConfig, got {type(self.generation).__name__}")

    def generation_backend(self, images: bool = False) -> str:
        """The backend the tables generate on (see harmlens.runtime.resolve_backend)."""
        return resolve_backend(self.backend, images=images)

    def selected(self) -> list[str]:
        """The chosen steps in the job's order."""
        return [s for s in STEPS if s in self.steps]
