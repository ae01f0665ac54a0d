"""The Latent Guard as a vLLM plugin, through vLLM's documented extension points only:

    HARMLENS_GUARD=guard.safetensors vllm serve MODEL --enforce-eager \
        --worker-extension-cls harmlens.guards.vllm_guard.plugin.GuardWorkerExtension \
        --logits-processors harmlens.guards.vllm_guard.plugin:GuardLogitsProcessor \
        --middleware harmlens.guards.vllm_guard.middleware.VerdictMiddleware   # optional: verdict to the client

GuardLogitsProcessor (a V1 logits processor, in the worker process) creates the worker's GuardReader; the worker
extension hands it the model runner when vLLM's worker makes one; the reader hooks the model, reads each request's
guard positions from vLLM's own prefill and, once that prefill is done, scores them; the logits processor then forces
a flagged request's refusal token by token and EOS (finish_reason "stop"), and leaves an allowed one untouched.
"""

from __future__ import annotations

from typing import Any

import torch

from harmlens.guards.vllm_guard.plugin_reader import GuardReader

EXTENSION = "harmlens.guards.vllm_guard.plugin.GuardWorkerExtension"
LOGITS_PROCESSOR = "harmlens.guards.vllm_guard.plugin:GuardLogitsProcessor"
_STATE: dict[str, Any] = {"reader": None, "runner": None}


def _attach() -> None:
    reader, runner = _STATE["reader"], _STATE["runner"]
    if reader is not None and runner is not None and getattr(runner, "model", None) is not None:
        if reader.model_runner is not runner:
            reader.attach(runner)


class GuardWorkerExtension:
    """Mixed into vLLM's Worker (--worker-extension-cls): passes the worker's model runner to the guard's reader."""

    @property
    def model_runner(self) -> Any:
        """The worker's model runner (vLLM sets it; the guard's reader is told)."""
        try:
            return self.__dict__["_hl_model_runner"]
        except KeyError:
            raise AttributeError("model_runner") from None

    @model_runner.setter
    def model_runner(self, runner: Any) -> None:
        self.__dict__["_hl_model_runner"] = runner
        _STATE["runner"] = runner

    def hl_guard_counts(self) -> dict[str, int]:
        """Verdicts given so far by this worker's guard (collective_rpc, e.g. from tests)."""
        reader = _STATE["reader"]
        return dict(reader.counts) if reader is not None else {}


class GuardLogitsProcessor:
    """V1 logits processor (--logits-processors): decides each request at the end of its prefill and forces a flagged
    request's refusal; never argmax-invariant, so vLLM applies it to greedy requests too."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        if _STATE["reader"] is None:
            _STATE["reader"] = GuardReader(vllm_config)
        self.reader: GuardReader = _STATE["reader"]

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        """Every request is guarded; no per-request parameter."""
        return None

    def is_argmax_invariant(self) -> bool:
        """False: forcing a refusal changes the argmax."""
        return False

    def update_state(self, batch_update: Any) -> None:
        """Before each forward: hook the model once its weights are loaded (the rest is keyed by request id)."""
        if self.reader.model_runner is None:
            _attach()

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Verdicts for requests whose prefill just ended; flagged rows get their next refusal token."""
        if self.reader.model_runner is None:
            _attach()
        return self.reader.force(logits)


try:  # register as vLLM's LogitsProcessor subclass when vLLM is importable (it checks issubclass)
    from vllm.v1.sample.logits_processor import LogitsProcessor as _Base

    _Base.register(GuardLogitsProcessor)
except ImportError:  # harmlens without vllm: the module still imports (launcher, docs)
    pass
