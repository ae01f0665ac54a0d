"""GuardedModel: generation whose own prefill feeds a LatentGuard, so guarding costs no extra forward pass."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from harmlens.errors import HarmlensError
from harmlens.guards.latent.image_inputs import (
    EncodedImage,
    ImagePrompt,
    collate_left,
    encode_image,
    image_token_id,
    padded_positions,
)
from harmlens.guards.latent.input_policy import mark_injections
from harmlens.guards.latent.verdict import Verdict, one_line
from harmlens.runtime import (
    ChatPrompt,
    PerDevice,
    cut_at_stop,
    ensure_kv_cache_compat,
    is_conversation,
    model_device,
    pad_batch,
    pad_id,
    resid_hook_name,
    stop_token_ids,
)

if TYPE_CHECKING:  # type-only: guard.py imports this module
    from harmlens.guards.latent.guard import LatentGuard

DEFAULT_REFUSAL = "I'm sorry, but I can't help with that request."


@dataclass(frozen=True)
class GuardedReply:
    """A reply and the verdict read from its own prefill; `blocked` replies are the configured refusal."""

    instruction: str
    text: str
    verdict: Verdict
    blocked: bool

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {"instruction": self.instruction, "text": self.text, "blocked": self.blocked, **self.verdict.to_dict()}


def check_refusal(refusal: object) -> None:
    """A refusal is a string or a callable(instruction, verdict) -> str (GuardedModel, VLLMGuardedModel)."""
    if not (isinstance(refusal, str) or callable(refusal)):
        raise HarmlensError("refusal must be a string or a callable(instruction, verdict) -> str")


def refusal_text(refusal: str | Callable[[str, Verdict], str], instruction: str, verdict: Verdict) -> str:
    """The reply a blocked prompt gets: the fixed refusal, or the callable's answer for this prompt."""
    return refusal if isinstance(refusal, str) else str(refusal(instruction, verdict))


def check_prompt_list(prompts: object, *, images: bool = True) -> None:
    """generate's prompts: a non-empty list of strings, ChatPrompts, message lists (not one conversation) and, when
    `images`, ImagePrompts."""
    if is_conversation(prompts):
        raise HarmlensError("generate takes a list of conversations: wrap one message list in [...]")
    if isinstance(prompts, (str, ChatPrompt, ImagePrompt)) or not isinstance(prompts, Sequence) or not prompts:
        raise HarmlensError("prompts must be a non-empty list of strings, ChatPrompts, message lists or ImagePrompts")
    if not images and any(isinstance(p, ImagePrompt) for p in prompts):
        raise HarmlensError("image prompts are not supported here: use GuardedModel (the HF backend) on a VLM")


class _AllBlocked(Exception):
    """Raised from the last guard hook when every row is blocked: the rest of the prefill is skipped."""


class _Reader:
    """Hooks that copy the guard's positions out of the prefill and decide once the last layer read is reached."""

    def __init__(
        self, guard: LatentGuard, rows: torch.Tensor, pos: torch.Tensor, truncated: list[bool], block: bool
    ) -> None:
        model = guard._require_model()
        self.guard, self.truncated, self.block = guard, truncated, block
        self.rows, self.pos = PerDevice(rows), PerDevice(pos)  # moved to each activation's device once
        self.names = [resid_hook_name(model, layer) for layer in guard.layers]
        self.last = resid_hook_name(model, max(guard.layers))
        self.store: dict[str, torch.Tensor] = {}
        self.verdicts: list[Verdict] | None = None
        self._mask: torch.Tensor | None = None

    def hook_for(self, name: str) -> Callable:
        """Forward hook for one hook point."""
        return lambda x, hook: self.read(name, x)

    def read(self, name: str, x: torch.Tensor) -> None:
        """Copy the positions during the prefill only (decode steps see one token); never modify x."""
        if self.verdicts is not None or x.shape[1] < 2:
            return None
        self.store[name] = x[self.rows.on(x.device), self.pos.on(x.device)].detach().float().to(self.rows.tensor.device)
        if name == self.last:
            try:
                self.verdicts = self._verdicts(slice(None), self.truncated)
            except Exception:  # noqa: BLE001 - retry row by row, so one bad row fails alone
                self.verdicts = [self._alone(i, t) for i, t in enumerate(self.truncated)]
            if self.block and all(v.harmful for v in self.verdicts):
                raise _AllBlocked
        return None

    def _verdicts(self, rows: slice, truncated: list[bool]) -> list[Verdict]:
        acts = torch.stack([self.store[n][rows] for n in self.names], dim=1)  # [batch, n_layers, width, d]
        verdicts = self.guard.verdicts_from_acts(acts, truncated)
        if len(verdicts) != len(truncated):
            raise HarmlensError(f"{len(verdicts)} verdicts for {len(truncated)} rows")
        return verdicts

    def _alone(self, i: int, truncated: bool) -> Verdict:
        try:
            return self._verdicts(slice(i, i + 1), [truncated])[0]
        except Exception as exc:  # noqa: BLE001 - fail closed, say why
            return self.guard.failed(f"internal error: {one_line(exc)}", truncated, attempted=True)

    def blocked(self, device) -> torch.Tensor:
        """Bool mask [batch] of rows to stop (computed once)."""
        if self._mask is None:
            if self.verdicts is None:
                self.verdicts = [self.guard.failed("the guard hook never fired", t) for t in self.truncated]
            self._mask = torch.tensor([self.block and v.harmful for v in self.verdicts], dtype=torch.bool)
        return self._mask.to(device)


class _StopBlocked(StoppingCriteria):
    """Stop the rows the guard blocked right after the prefill (their single sampled token is discarded)."""

    def __init__(self, reader: _Reader) -> None:
        self.reader = reader

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return cast(torch.BoolTensor, self.reader.blocked(input_ids.device))


class GuardedModel:
    """Chat generation guarded by a LatentGuard read from the same forward pass that generation needs."""

    def __init__(
        self,
        model,
        guard: LatentGuard,
        *,
        refusal: str | Callable[[str, Verdict], str] = DEFAULT_REFUSAL,
        block: bool = True,
        processor=None,
    ) -> None:
        if guard.model is not model:
            guard.attach(model)
        check_refusal(refusal)
        self.model, self.guard, self.refusal, self.block = model, guard, refusal, block
        self.processor = processor if processor is not None else getattr(model, "processor", None)  # VLMs only

    def _refusal(self, instruction: str, verdict: Verdict) -> str:
        return refusal_text(self.refusal, instruction, verdict)

    def _prepare(self, prompt) -> tuple[ChatPrompt, bool, EncodedImage | None]:
        """(rendered prompt, truncated, the processor's inputs for an ImagePrompt else None)."""
        if not isinstance(prompt, ImagePrompt):
            return (*self.guard.prepare(prompt), None)
        chat, _ = self.guard.prepare(prompt.prompt)  # the same checks as any pre-rendered prompt
        return chat, False, encode_image(self.guard, self.model, prompt, self.processor)

    def generate(
        self,
        prompts: Sequence,
        *,
        max_new_tokens: int = 64,
        batch_size: int = 16,
        do_sample: bool = False,
        temperature: float = 1.0,
        seed: int = 0,
        progress: bool = False,
    ) -> list[GuardedReply]:
        """Replies (greedy by default, left-padded, length-sorted batches); blocked prompts get the refusal. Each prompt
        is a string, a ChatPrompt, an OpenAI-style message list (a conversation) or, on a VLM, an ImagePrompt (its
        pixel values go through the model's processor; image and text prompts never share a batch)."""
        check_prompt_list(prompts)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1 or max_new_tokens < 1:
            raise HarmlensError("batch_size and max_new_tokens must be positive integers")
        if any(isinstance(p, ImagePrompt) for p in prompts):
            image_token_id(self.model, self.processor)  # a text model (no processor) is told so in one line
        out: list[GuardedReply | None] = [None] * len(prompts)
        ready = []
        for i, prompt in enumerate(prompts):
            try:
                ready.append((i, *self._prepare(prompt)))
            except Exception as exc:  # noqa: BLE001 - a bad prompt is answered on its own
                verdict = self.guard.failed(one_line(exc))
                text = instruction_of(prompt)
                out[i] = GuardedReply(
                    text, self._refusal(text, verdict) if verdict.harmful else "", verdict, verdict.harmful
                )
        ensure_kv_cache_compat()
        stops, pid = stop_token_ids(self.model), pad_id(self.model.tokenizer)
        kwargs = dict(
            max_new_tokens=max_new_tokens, do_sample=do_sample, eos_token_id=stops, pad_token_id=pid, use_cache=True
        )
        kwargs.update(dict(temperature=temperature) if do_sample else dict(temperature=None, top_p=None, top_k=None))
        ready.sort(key=lambda r: (r[3] is not None, len(r[3] if r[3] is not None else r[1])))
        bar = tqdm(total=len(ready), desc="guarded generation", disable=not progress, unit="prompt")
        for start, chunk in _batches(ready, batch_size):
            device = model_device(self.model)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed + start)
                new, verdicts = self._batch(chunk, kwargs, stops)
            verdicts = mark_injections(
                self.guard, [r[1] if r[3] is not None else prompts[r[0]] for r in chunk], verdicts
            )
            for (i, prompt, *_), ids, verdict in zip(chunk, new, verdicts):
                blocked = self.block and verdict.harmful
                text = (
                    self._refusal(prompt.instruction, verdict)
                    if blocked
                    else self.model.tokenizer.decode(ids, skip_special_tokens=True)
                )
                out[i] = GuardedReply(prompt.instruction, text, verdict, blocked)
            bar.update(len(chunk))
        bar.close()
        return out  # type: ignore[return-value]

    def _inputs(self, chunk: list, pid: int, device) -> tuple[dict, torch.Tensor]:
        """A left-padded batch's model inputs and the guard's positions in it [batch, width]: text prompts from their
        token ids, image prompts from the processor (pixel values; positions past the expanded image, as image_acts)."""
        if chunk[0][3] is None:
            prompts = [r[1] for r in chunk]
            batch = pad_batch(prompts, pid, padding_side="left", device=device)
            read = self.guard.width(prompts)  # positions read per prompt (1, or the span's longest)
            pos = torch.tensor([self.guard.select(p, read) for p in prompts], device=device) + batch.offsets[:, None]
            return dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask), pos
        inputs, offsets = collate_left([r[3] for r in chunk], pid)
        read = max(len(r[3].positions) for r in chunk)
        pos = torch.tensor([padded_positions(r[3].positions, read) for r in chunk]) + offsets[:, None]
        return {k: v.to(device) for k, v in inputs.items()}, pos.to(device)

    def _batch(self, chunk: list, kwargs: dict, stops: list[int]) -> tuple[list[list[int]], list[Verdict]]:
        """One left-padded batch: generate, reading the guard's activations from the prefill."""
        device = model_device(self.model)
        inputs, pos = self._inputs(chunk, kwargs["pad_token_id"], device)
        truncated = [r[2] for r in chunk]
        reader = _Reader(self.guard, torch.arange(len(chunk), device=device)[:, None], pos, truncated, self.block)
        width = inputs["input_ids"].shape[1]
        hooks = [(n, reader.hook_for(n)) for n in dict.fromkeys(reader.names)]
        with torch.no_grad(), self.model.hooks(fwd_hooks=hooks):
            try:
                seqs = self.model.original_model.generate(
                    **inputs, stopping_criteria=StoppingCriteriaList([_StopBlocked(reader)]), **kwargs
                )
                new = [seqs[row, width:].tolist() for row in range(len(chunk))]
            except _AllBlocked:
                new = [[] for _ in chunk]
        reader.blocked(device)  # fills fail-closed verdicts if the hook never fired
        new = [cut_at_stop(ids, stops) for ids in new]
        return new, reader.verdicts  # type: ignore[return-value]

    def __call__(self, prompts, **kwargs) -> str | list[str]:
        """Reply text(s) only: one for a string, ChatPrompt, ImagePrompt or message list, a list for a list of them."""
        if isinstance(prompts, (str, ChatPrompt, ImagePrompt)) or is_conversation(prompts):
            return self.generate([prompts], **kwargs)[0].text
        return [r.text for r in self.generate(prompts, **kwargs)]


def instruction_of(prompt: object) -> str:
    """The instruction a reply reports: the string itself, a rendered prompt's instruction, else ''."""
    prompt = prompt.prompt if isinstance(prompt, ImagePrompt) else prompt
    return str(getattr(prompt, "instruction", prompt)) if isinstance(prompt, (str, ChatPrompt)) else ""


def _batches(ready: list, size: int) -> Iterator[tuple[int, list]]:
    """(start, chunk) of at most `size` sorted items; text and image prompts (r[3] set) never share a chunk."""
    start = 0
    while start < len(ready):
        kind = ready[start][3] is None
        end = start
        while end < len(ready) and end - start < size and (ready[end][3] is None) == kind:
            end += 1
        yield start, ready[start:end]
        start = end
