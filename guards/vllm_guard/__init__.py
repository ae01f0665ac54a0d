"""The Latent Guard inside vLLM: the guard reads vLLM's own prefill through a worker extension (optional: vllm).

VLLMGuardedModel drives vLLM's engine from Python; the plugin of vLLM's own OpenAI server lives in .plugin (worker
extension, logits processor), .plugin_reader, .middleware and .launch (`serve --backend vllm`), imported on demand.
"""

from harmlens.guards.vllm_guard.guarded import VLLMGuardedModel, guarded_engine

__all__ = ["VLLMGuardedModel", "guarded_engine"]
