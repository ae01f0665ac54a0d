"""One generation seam: batched generation behind a small Backend protocol ('hf' here, 'vllm' in vllm_engine)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from tqdm.auto import tqdm

from harmlens.errors import HarmlensError
from harmlens.runtime.batching import sorted_batches
from harmlens.runtime.chat import ChatPrompt
from harmlens.runtime.compat import ensure_kv_cache_compat
from harmlens.runtime.devices import input_device
from harmlens.runtime.token_prompts import (
    Prompts,
    check_generation_args,
    cut_at_stop,
    left_pad,
    pad_id,
    stop_token_ids,
    token_ids,
)

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["BACKENDS", "Backend", "HFBackend", "Prompts", "get_backend", "hf_generate_ids", "pad_id", "stop_token_ids"]
__all__ += ["check_generation_args", "left_pad", "token_ids"]

BACKENDS = ("hf", "vllm")


@runtime_checkable
class Backend(Protocol):
    """Something that turns rendered prompts (or token ids) into reply texts, greedy unless do_sample."""

    name: str

    def generate(
        self,
        prompts: Prompts,
        *,
        max_new_tokens: int = 64,
        batch_size: int = 16,
        do_sample: bool = False,
        temperature: float = 1.0,
        seed: int = 0,
        images: Sequence | None = None,
        progress: bool = False,
    ) -> list[str]:
        """Reply texts in prompt order (new tokens only, special tokens dropped)."""
        ...


def hf_generate_ids(
    hf,
    lengths: Sequence[int],
    encode: Callable[[list[int]], dict[str, Any]],
    *,
    stops: Sequence[int],
    pad: int,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    progress: bool = False,
    desc: str = "generating",
    **hf_kwargs,
) -> list[list[int]]:
    """The one HF generate loop: length-sorted left-padded batches, seeded per batch, ids cut at the first stop.

    `encode(indices)` returns the batch's model inputs (input_ids, attention_mask and e.g. pixel_values).
    """
    check_generation_args(max_new_tokens, do_sample, temperature)
    ensure_kv_cache_compat()
    kwargs: dict[str, Any] = dict(
        max_new_tokens=max_new_tokens, do_sample=do_sample, eos_token_id=list(stops), pad_token_id=pad, use_cache=True
    )
    kwargs.update(dict(temperature=temperature) if do_sample else dict(temperature=None, top_p=None, top_k=None))
    kwargs.update(hf_kwargs)
    device = input_device(hf)
    out: list[list[int]] = [[] for _ in lengths]
    bar = tqdm(total=len(lengths), desc=desc, disable=not progress, unit="prompt")
    for start, idx in sorted_batches(lengths, batch_size):
        enc = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in encode(idx).items()}
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed + start)
            seqs = hf.generate(**enc, **kwargs)
        width = enc["input_ids"].shape[1]
        for row, i in enumerate(idx):
            new = seqs[row, width:].tolist()
            out[i] = cut_at_stop(new, stops)
        bar.update(len(idx))
    bar.close()
    return out


class HFBackend:
    """Generation through the bridged HF model: active hooks (steering, ablation, guards) apply; with `hooks` (a
    context-manager factory, e.g. lambda: ablate(model, r)) every generation runs inside it."""

    name = "hf"

    def __init__(self, model, processor=None, *, hooks: Callable[[], AbstractContextManager] | None = None) -> None:
        self.model, self.processor, self.hooks = model, processor, hooks

    @property
    def tokenizer(self):
        """The model's tokenizer (a bridge's own, else the processor's for a plain HF VLM)."""
        tok = getattr(self.model, "tokenizer", None) or getattr(self.processor, "tokenizer", None)
        if tok is None:
            raise HarmlensError(
                "generation needs a tokenizer: load the model with load_model/from_hf or pass a processor"
            )
        return tok

    def generate_ids(self, prompts: Prompts, *, images: Sequence | None = None, **kwargs) -> list[list[int]]:
        """New token ids per prompt (stop token excluded)."""
        seqs = token_ids(prompts)
        tok = self.tokenizer
        hf, pid = getattr(self.model, "original_model", self.model), pad_id(tok)
        if images is None:
            encode: Callable[[list[int]], dict[str, Any]] = lambda idx: left_pad([seqs[i] for i in idx], pid)  # noqa: E731
        else:
            encode = self._image_encoder(prompts, images)
        with self._hooks():
            return hf_generate_ids(
                hf, [len(s) for s in seqs], encode, stops=stop_token_ids(self.model, tok), pad=pid, **kwargs
            )

    def _hooks(self) -> AbstractContextManager:
        """The condition's hooks (e.g. an ablation) when this backend serves one, else nothing."""
        return nullcontext() if self.hooks is None else self.hooks()

    def _image_encoder(self, prompts: Prompts, images: Sequence) -> Callable[[list[int]], dict[str, Any]]:
        """Batches through the processor, which expands each image token and adds pixel_values."""
        if self.processor is None:
            raise HarmlensError("image prompts need the model's processor (evaluate_asr(..., processor=...))")
        if len(images) != len(prompts):
            raise HarmlensError(f"{len(images)} images for {len(prompts)} prompts")
        if not all(isinstance(p, ChatPrompt) for p in prompts):
            raise HarmlensError("image prompts must be ChatPrompts (their text goes through the processor)")
        tok = getattr(self.processor, "tokenizer", None) or self.tokenizer

        def encode(idx: list[int]) -> dict[str, Any]:
            old_side = getattr(tok, "padding_side", "right")
            tok.padding_side = "left"
            try:
                enc = self.processor(
                    text=[prompts[i].text for i in idx],  # type: ignore[union-attr]
                    images=[images[i] for i in idx],
                    padding=True,
                    return_tensors="pt",
                )
            finally:
                tok.padding_side = old_side
            if "pixel_values" not in enc:
                raise HarmlensError("the processor returned no pixel_values: is this a vision-language model?")
            return dict(enc)

        return encode

    def generate(self, prompts: Prompts, *, images: Sequence | None = None, **kwargs) -> list[str]:
        """Reply texts (special tokens dropped), in prompt order."""
        tok = getattr(self.processor, "tokenizer", None) if images is not None else None
        tok = tok or self.tokenizer
        return [
            tok.decode(ids, skip_special_tokens=True) for ids in self.generate_ids(prompts, images=images, **kwargs)
        ]


def get_backend(
    model: TransformerBridge,
    backend: str | Backend = "hf",
    *,
    processor=None,
    hooks: Callable[[], AbstractContextManager] | None = None,
    weights: str | None = None,
    key: str | None = None,
    **engine_kwargs,
) -> Backend:
    """A Backend for the model: 'hf', 'vllm' (started once per model and key, then reused) or a Backend as is.

    A condition (see harmlens.probes.conditions) reaches 'hf' as `hooks` (a context-manager factory every generation
    runs inside) and 'vllm' as `weights` (an HF folder of edited weights, kept under `key`).
    """
    if isinstance(backend, Backend) and not isinstance(backend, str):
        if hooks is not None or weights is not None:
            raise HarmlensError(
                "a condition cannot be added to a backend you built: use backend='hf' or 'vllm', or build it with "
                "harmlens.probes.conditions.condition_backend(model, ..., ablation=direction)"
            )
        return backend
    if backend == "hf":
        return HFBackend(model, processor, hooks=hooks)
    if backend == "vllm":
        from harmlens.runtime.vllm_engine import vllm_backend

        return vllm_backend(model, weights=weights, key=key, **engine_kwargs)
    raise HarmlensError(f"unknown generation backend {backend!r}; choose from {', '.join(BACKENDS)}")
