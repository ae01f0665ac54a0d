"""VLLMGuardedModel: vLLM serves the model; the guard reads vLLM's own prefill (no extra forward, no second model).

The same adapter as GuardedModel over the other engine: prompts are prepared and answered the same way, and the guard
goes to `VLLMBackend.generate_ids(..., read=...)` as a PrefillRead (guards.latent.guard_read). The engine reads the
guard's positions in vLLM's worker, asks for verdicts as soon as each prefill is done and aborts the blocked requests;
rows that vLLM's prefix cache hides come from the engine's read cache or one recomputed prefill.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from harmlens.errors import HarmlensError
from harmlens.guards.latent.guarded import DEFAULT_REFUSAL, GuardedModel, GuardedReply, check_prompt_list
from harmlens.guards.latent.verdict import Verdict
from harmlens.runtime import (
    INSTALL_HINT,
    GenerationConfig,
    PrefillRead,
    ReadCache,
    VLLMBackend,
    remember_engine,
    vllm_available,
)

if TYPE_CHECKING:
    from harmlens.guards.latent.guard import LatentGuard


def guarded_engine(model: Any, **engine_kwargs: Any) -> VLLMBackend:
    """A vLLM engine over the model's weights that can take prefill reads (VLLMBackend(model, reads=True)); reused by
    get_backend(model, 'vllm')."""
    if not vllm_available():
        raise HarmlensError(INSTALL_HINT)
    return remember_engine(model, VLLMBackend(model, reads=True, **engine_kwargs))


class VLLMGuardedModel(GuardedModel):
    """Guarded chat generation served by vLLM; the same replies and verdicts as GuardedModel, read from vLLM's prefill.

    `engine`: a VLLMBackend started with reads=True (else one is started with `engine_kwargs` and remembered).
    """

    unread = "vLLM did not compute the guard's positions (its prefill was not read)"

    def __init__(
        self,
        model: Any,
        guard: LatentGuard,
        *,
        refusal: str | Callable[[str, Verdict], str] = DEFAULT_REFUSAL,
        block: bool = True,
        engine: VLLMBackend | None = None,
        **engine_kwargs: Any,
    ) -> None:
        if engine is not None and engine_kwargs:
            raise HarmlensError("pass engine= or engine settings, not both")
        super().__init__(model, guard, refusal=refusal, block=block)
        self.backend = engine if engine is not None else guarded_engine(model, **engine_kwargs)
        self.backend.install_reads(guard.layers)  # a model vLLM's worker cannot hook fails here, in one line

    @property
    def cache(self) -> ReadCache:
        """The engine's cache of rows read earlier (serves rows vLLM's prefix cache hides)."""
        return self.backend.read_cache

    @property
    def recomputed(self) -> int:
        """Prompts the engine re-ran because the prefix cache hid their positions."""
        return self.backend.recomputed

    def reset_prefix_cache(self) -> None:
        """Empty vLLM's prefix cache and the read cache together."""
        self.backend.reset_prefix_cache()

    def generate(
        self, prompts: Sequence, config: GenerationConfig | Mapping | None = None, **overrides: Any
    ) -> list[GuardedReply]:
        """Replies as GuardedModel.generate gives them (text prompts only); vLLM batches continuously (batch_size
        unused)."""
        check_prompt_list(prompts, images=False)
        return super().generate(prompts, config, **overrides)

    def check(self, prompts: Sequence) -> list[Verdict]:
        """The guard's verdicts read from a one-token vLLM prefill (moderation without the HF model's forward)."""
        block, self.block = self.block, False
        try:
            return [r.verdict for r in self.generate(list(prompts), max_new_tokens=1)]
        finally:
            self.block = block

    def _generate(self, group: list, config: GenerationConfig, read: PrefillRead) -> list[list[int]]:
        """New ids per prompt of one (text) group on the vllm engine."""
        return self.backend.generate_ids([r[1] for r in group], config, read=read)
