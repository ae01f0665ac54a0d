"""The main job's typed settings, shared by `python -m harmlens.guards main` and code."""

from __future__ import annotations

from dataclasses import dataclass

from harmlens.errors import HarmlensError

BACKENDS = ("auto", "hf", "vllm")
STEPS = ("organism", "directions", "attacks", "guard", "adversarial")
TRAIN_JAILBREAKS = ("prefix_injection", "refusal_suppression", "evil_confidant", "payload_splitting")  # adversarial mix
EVAL_JAILBREAKS = ("style_injection", "few_shot_json")  # the two strongest on the organism; never trained on


def resolve_backend(backend: str, images: bool = False) -> str:
    """hf or vllm: 'auto' is vLLM when installed and the prompts are text (images go through hf), else hf."""
    from harmlens.runtime import INSTALL_HINT, vllm_available

    if backend not in BACKENDS:
        raise HarmlensError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "vllm" and not vllm_available():
        raise HarmlensError(INSTALL_HINT)
    if backend == "vllm" and images:
        raise HarmlensError("image prompts are not served through vLLM yet: use backend hf for a VLM")
    if backend == "auto":
        return "vllm" if vllm_available() and not images else "hf"
    return backend


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
    batch_size: int = 32  # prompts per generation batch of those tables (1.3x faster than 16 on 2 CPU cores)
    max_new_tokens: int = 32  # reply length of the attack table and the before/after tables (one attack serves both)

    def __post_init__(self) -> None:
        for name in ("jailbreaks", "steps"):  # a comma string is accepted as code shorthand
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, tuple(v.strip() for v in value.split(",") if v.strip()))
        unknown = sorted(set(self.steps) - set(STEPS))
        if unknown:
            raise HarmlensError(f"unknown step(s) {unknown}; choose from {', '.join(STEPS)}")
        sizes = {k: getattr(self, k) for k in ("n", "n_directions", "batch_size", "max_new_tokens")}
        if any(not isinstance(v, int) or v < 1 for v in sizes.values()):
            raise HarmlensError(f"{', '.join(sizes)} must be positive integers (got {sizes})")
        if not self.jailbreaks:
            raise HarmlensError("the attack table needs at least one jailbreak")
        if self.backend not in BACKENDS:
            raise HarmlensError(f"unknown backend {self.backend!r}; choose from {', '.join(BACKENDS)}")

    def generation_backend(self, images: bool = False) -> str:
        """The backend the tables generate on (see resolve_backend)."""
        return resolve_backend(self.backend, images)

    def selected(self) -> list[str]:
        """The chosen steps in the job's order."""
        return [s for s in STEPS if s in self.steps]
