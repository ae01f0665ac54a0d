"""Old import path of the vLLM worker extension, which now lives in the runtime (harmlens.runtime.vllm_worker).

Kept so an engine started with worker_extension_cls="harmlens.guards.vllm_guard.worker.GuardWorkerExtension" (as
earlier docs said) still loads it.
"""

from harmlens.runtime import ReadWorkerExtension as GuardWorkerExtension

__all__ = ["GuardWorkerExtension"]
