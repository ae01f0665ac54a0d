"""The Latent Guard inside vLLM: the guard reads vLLM's own prefill through a worker extension (optional: vllm)."""

from harmlens.guards.vllm_guard.guarded import VLLMGuardedModel, guarded_engine

__all__ = ["VLLMGuardedModel", "guarded_engine"]
