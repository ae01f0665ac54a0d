"""The Hugging Face engine: the one place harmlens calls transformers' `generate`, with an optional prefill read.

Batches are length-sorted and left-padded, seeded per batch. The call runs on the plain HF view of the model
(harmlens.runtime.hooks) unless a user's own TransformerLens hook is active, so generation with no hook, or with
harmlens's own interventions (steering, ablation, a guard's read), costs what plain transformers costs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, cast

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from harmlens.errors import HarmlensError
from harmlens.runtime.activations import resid_hook_name
from harmlens.runtime.batching import sorted_batches
from harmlens.runtime.chat import ChatPrompt
from harmlens.runtime.compat import ensure_kv_cache_compat
from harmlens.runtime.devices import PerDevice, input_device
from harmlens.runtime.engine_api import DEFAULT_CONFIG, GenerationConfig, PrefillRead
from harmlens.runtime.hooks import add_hooks, runnable_model
from harmlens.runtime.token_prompts import Prompts, cut_at_stop, left_pad, pad_id, stop_token_ids, token_ids

Encoder = Callable[[list[int]], dict[str, Any]]


class _AllStopped(Exception):
    """Raised by the last read hook when the reader stops every row: the rest of the prefill is skipped."""


class _BatchRead:
    """One batch's prefill read: copies the asked rows once per layer, then asks the reader which rows stop."""

    def __init__(self, read: PrefillRead, model: Any, idx: list[int], offsets: torch.Tensor) -> None:
        self.read, self.idx = read, idx
        wanted = [list(read.positions(i)) for i in idx]
        self.lengths = [len(p) for p in wanted]
        width = max(self.lengths)
        padded = [p + [p[-1]] * (width - len(p)) for p in wanted]  # repeats are sliced off again in `finish`
        self.pos = PerDevice(torch.tensor(padded) + offsets.cpu()[:, None])
        self.rows = PerDevice(torch.arange(len(idx))[:, None])
        self.names = [resid_hook_name(model, layer) for layer in read.layers]
        self.last = resid_hook_name(model, max(read.layers))
        self.store: dict[str, torch.Tensor] = {}
        self.stop: list[bool] | None = None

    def hooks(self) -> list[tuple[str, Callable]]:
        """(hook name, fn) pairs for add_hooks."""
        return [(name, lambda x, name=name: self.take(name, x)) for name in dict.fromkeys(self.names)]

    def take(self, name: str, x: torch.Tensor) -> None:
        """During the prefill only (decode steps see one token): copy the rows, decide at the last layer read."""
        if self.stop is not None or x.shape[1] < 2:
            return None
        self.store[name] = x[self.rows.on(x.device), self.pos.on(x.device)].detach().float()
        if name == self.last:
            self.finish()
            if self.stop is not None and all(self.stop):
                raise _AllStopped
        return None

    def finish(self) -> list[bool]:
        """The reader's decision (asked with None activations if the prefill never reached the hooks)."""
        if self.stop is None:
            if all(n in self.store for n in self.names):
                out_device = self.store[self.names[0]].device
                acts = torch.stack([self.store[n].to(out_device) for n in self.names], dim=1)
                per_row: list[torch.Tensor | None] = [acts[k, :, :n] for k, n in enumerate(self.lengths)]
            else:
                per_row = [None] * len(self.idx)
            self.stop = [bool(s) for s in self.read.decide(self.idx, per_row)]
            if len(self.stop) != len(self.idx):
                raise HarmlensError(f"the prefill reader answered for {len(self.stop)} of {len(self.idx)} prompts")
        return self.stop


class _StopRows(StoppingCriteria):
    """Stop the rows the reader stopped right after the prefill (their one sampled token is discarded)."""

    def __init__(self, batch_read: _BatchRead) -> None:
        self.batch_read = batch_read
        self.mask: torch.Tensor | None = None  # built once: no host-to-device copy per decode step

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        if self.mask is None:
            self.mask = torch.tensor(self.batch_read.finish(), device=input_ids.device)
        return cast(torch.BoolTensor, self.mask)


def generate_kwargs(config: GenerationConfig, stops: Sequence[int], pad: int) -> dict[str, Any]:
    """transformers generate() arguments for a GenerationConfig."""
    kwargs: dict[str, Any] = dict(
        max_new_tokens=config.max_new_tokens,
        do_sample=config.do_sample,
        eos_token_id=list(stops),
        pad_token_id=pad,
        use_cache=True,
    )
    if config.do_sample:
        kwargs.update(temperature=config.temperature, top_p=config.top_p, top_k=None)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if config.cache == "static":
        kwargs["cache_implementation"] = "static"
        if config.compile:
            from transformers import CompileConfig

            kwargs["compile_config"] = CompileConfig()
        else:
            kwargs["disable_compile"] = True
    return kwargs


def hf_generate_ids(
    model: Any,
    lengths: Sequence[int],
    encode: Encoder,
    config: GenerationConfig,
    *,
    stops: Sequence[int],
    pad: int,
    read: PrefillRead | None = None,
    desc: str = "generating",
    **hf_kwargs: Any,
) -> list[list[int]]:
    """The one HF generate loop: length-sorted batches from `encode(indices)` (input_ids, attention_mask, maybe
    pixel_values), each seeded with seed + its start, ids cut at the first stop; `read` reads and decides per batch."""
    ensure_kv_cache_compat()
    kwargs = {**generate_kwargs(config, stops, pad), **hf_kwargs}
    out: list[list[int]] = [[] for _ in lengths]
    bar = tqdm(total=len(lengths), desc=desc, disable=not config.progress, unit="prompt")
    for start, idx in sorted_batches(lengths, config.batch_size):
        runner = runnable_model(model)  # per batch: hooks may change between batches only through the caller
        device = input_device(runner)
        enc = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in encode(idx).items()}
        width = enc["input_ids"].shape[1]
        batch_read = None
        hooks: AbstractContextManager = nullcontext()
        extra: dict[str, Any] = {}
        if read is not None:
            offsets = (enc["attention_mask"] == 0).sum(dim=1)  # left padding: each row's first real token
            batch_read = _BatchRead(read, model, idx, offsets)
            hooks = add_hooks(model, batch_read.hooks())
            extra["stopping_criteria"] = StoppingCriteriaList([_StopRows(batch_read)])
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), hooks:
            torch.manual_seed(config.seed + start)
            try:
                seqs = runner.generate(**enc, **kwargs, **extra)
                new = [seqs[row, width:].tolist() for row in range(len(idx))]
            except _AllStopped:
                new = [[] for _ in idx]
        stopped = batch_read.finish() if batch_read is not None else [False] * len(idx)
        for row, i in enumerate(idx):
            out[i] = [] if stopped[row] else cut_at_stop(new[row], stops)
        bar.update(len(idx))
    bar.close()
    return out


class HFBackend:
    """Generation through the model's HF weights: harmlens's hooks (steering, ablation, guards) and a user's own
    TransformerLens hooks apply; with `hooks` (a context-manager factory, e.g. lambda: ablate(model, r)) every
    generation runs inside it."""

    name = "hf"

    def __init__(self, model: Any, processor: Any = None, *, hooks: Callable[[], AbstractContextManager] | None = None):
        self.model, self.processor, self.hooks = model, processor, hooks

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (a bridge's own, else the processor's for a plain HF VLM)."""
        tok = getattr(self.model, "tokenizer", None) or getattr(self.processor, "tokenizer", None)
        if tok is None:
            raise HarmlensError(
                "generation needs a tokenizer: load the model with load_model/from_hf or pass a processor"
            )
        return tok

    def generate_ids(
        self,
        prompts: Prompts,
        config: GenerationConfig = DEFAULT_CONFIG,
        *,
        images: Sequence | None = None,
        read: PrefillRead | None = None,
    ) -> list[list[int]]:
        """New token ids per prompt (stop token excluded); rows `read` stops come back empty."""
        seqs = token_ids(prompts)
        tok = self.tokenizer
        pid = pad_id(tok)
        if images is None:
            encode: Encoder = lambda idx: left_pad([seqs[i] for i in idx], pid)  # noqa: E731
        else:
            encode = self._image_encoder(prompts, images)
        with nullcontext() if self.hooks is None else self.hooks():
            stops = stop_token_ids(self.model, tok)
            return hf_generate_ids(self.model, [len(s) for s in seqs], encode, config, stops=stops, pad=pid, read=read)

    def _image_encoder(self, prompts: Prompts, images: Sequence) -> Encoder:
        """Batches through the processor, which expands each image token and adds pixel_values."""
        if self.processor is None:
            raise HarmlensError("image prompts need the model's processor (evaluate_asr(..., processor=...))")
        if len(images) != len(prompts):
            raise HarmlensError(f"{len(images)} images for {len(prompts)} prompts")
        if not all(isinstance(p, ChatPrompt) for p in prompts):
            raise HarmlensError("image prompts must be ChatPrompts (their text goes through the processor)")
        tok = getattr(self.processor, "tokenizer", None) or self.tokenizer
        texts = [cast(ChatPrompt, p).text for p in prompts]

        def encode(idx: list[int]) -> dict[str, Any]:
            old_side = getattr(tok, "padding_side", "right")
            tok.padding_side = "left"
            try:
                enc = self.processor(
                    text=[texts[i] for i in idx], images=[images[i] for i in idx], padding=True, return_tensors="pt"
                )
            finally:
                tok.padding_side = old_side
            if "pixel_values" not in enc:
                raise HarmlensError("the processor returned no pixel_values: is this a vision-language model?")
            return dict(enc)

        return encode

    def generate(
        self, prompts: Prompts, config: GenerationConfig = DEFAULT_CONFIG, *, images: Sequence | None = None
    ) -> list[str]:
        """Reply texts (special tokens dropped), in prompt order."""
        tok = getattr(self.processor, "tokenizer", None) if images is not None else None
        tok = tok or self.tokenizer
        ids = self.generate_ids(prompts, config, images=images)
        return [tok.decode(x, skip_special_tokens=True) for x in ids]
