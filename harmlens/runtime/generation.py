"""One generation seam: pick an engine ('hf', 'vllm' or 'auto'), render chat prompts, generate with one config."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from harmlens.errors import HarmlensError
from harmlens.runtime.chat import ChatPrompt, chat_format
from harmlens.runtime.engine_api import Backend, GenerationConfig, generation_config
from harmlens.runtime.hf_engine import HFBackend

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

BACKENDS = ("auto", "hf", "vllm")


def resolve_backend(backend: str, *, images: bool = False, hooks: bool = False) -> str:
    """'hf' or 'vllm' for a backend name: 'auto' is vLLM when it is installed, the prompts are text and no hook has to
    run (vLLM cannot run hooks or serve images yet), else hf; an impossible explicit choice is a one-line error."""
    from harmlens.runtime.vllm_engine import INSTALL_HINT, vllm_available

    if not isinstance(backend, str) or backend not in BACKENDS:
        raise HarmlensError(f"unknown generation backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "auto":
        return "vllm" if vllm_available() and not images and not hooks else "hf"
    if backend == "vllm":
        if not vllm_available():
            raise HarmlensError(INSTALL_HINT)
        if images:
            raise HarmlensError("image prompts are not served through vLLM yet: use backend 'hf' for a VLM")
        if hooks:
            raise HarmlensError("vLLM cannot run activation hooks (steering, ablation hooks): use backend 'hf'")
    return backend


def get_backend(
    model: TransformerBridge,
    backend: str | Backend = "hf",
    *,
    processor: Any = None,
    hooks: Callable[[], AbstractContextManager] | None = None,
    weights: str | None = None,
    key: str | None = None,
    **engine_kwargs: Any,
) -> Backend:
    """A Backend for the model: 'hf', 'vllm' (started once per model and key, then reused), 'auto', or a Backend as is.

    A condition (see harmlens.probes.conditions) reaches 'hf' as `hooks` (a context-manager factory every generation
    runs inside) and 'vllm' as `weights` (an HF folder of edited weights, kept under `key`).
    """
    if not isinstance(backend, str):
        if not isinstance(backend, Backend):
            raise HarmlensError(f"backend must be 'hf', 'vllm', 'auto' or a Backend, got {type(backend).__name__}")
        if hooks is not None or weights is not None:
            raise HarmlensError(
                "a condition cannot be added to a backend you built: use backend='hf' or 'vllm', or build it with "
                "harmlens.probes.conditions.condition_backend(model, ..., ablation=direction)"
            )
        return backend
    from harmlens.runtime.vllm_engine import active_hooks

    hooked = hooks is not None or (backend == "auto" and bool(active_hooks(model)))
    name = resolve_backend(backend, hooks=hooked)
    if name == "hf":
        return HFBackend(model, processor, hooks=hooks)
    from harmlens.runtime.vllm_engine import vllm_backend

    return vllm_backend(model, weights=weights, key=key, **engine_kwargs)


def render(
    model: TransformerBridge, instructions: Sequence[str] | Sequence[ChatPrompt], system: str | None = None
) -> list[ChatPrompt]:
    """Strings -> ChatPrompts through the model's chat template; ChatPrompts pass through unchanged."""
    if isinstance(instructions, str) or not isinstance(instructions, Sequence) or not instructions:
        raise HarmlensError("instructions must be a non-empty list of strings or ChatPrompts")
    if all(isinstance(x, ChatPrompt) for x in instructions):
        if system is not None:
            raise HarmlensError("system= only applies to string instructions, not to already rendered ChatPrompts")
        return [x for x in instructions if isinstance(x, ChatPrompt)]
    if not all(isinstance(x, str) for x in instructions):
        raise HarmlensError("instructions must be all strings or all ChatPrompts, not a mix")
    return chat_format(model, system=system).render_many([x for x in instructions if isinstance(x, str)])


def generate_ids(
    model: TransformerBridge,
    prompts: Sequence[ChatPrompt],
    config: GenerationConfig | Mapping | None = None,
    **overrides: Any,
) -> list[list[int]]:
    """New token ids per prompt on the hf engine (stop token excluded); active hooks apply."""
    config = generation_config(config, **overrides)
    if not prompts or not all(isinstance(p, ChatPrompt) for p in prompts):
        raise HarmlensError("prompts must be a non-empty list of ChatPrompts (see harmlens.runtime.chat_format)")
    return HFBackend(model).generate_ids(prompts, config)


def generate(
    model: TransformerBridge,
    instructions: list[str] | list[ChatPrompt],
    config: GenerationConfig | Mapping | None = None,
    *,
    system: str | None = None,
    backend: str | Backend = "hf",
    **overrides: Any,
) -> list[str]:
    """Chat replies (new tokens only, special tokens dropped), batched and left-padded; greedy by default.

    `config` sets how (GenerationConfig; keywords such as max_new_tokens=32 override it); backend 'hf' runs the model
    with its hooks, 'vllm' serves the same weights through vLLM (no hooks), 'auto' picks vLLM when it can.
    """
    config = generation_config(config, **overrides)
    prompts = render(model, instructions, system)
    return get_backend(model, backend).generate(prompts, config)
