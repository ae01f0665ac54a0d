"""GuardedModel: generation whose own prefill feeds a LatentGuard, so guarding costs no extra forward pass."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harmlens.errors import HarmlensError
from harmlens.guards.latent.guard_read import UNREAD, GuardRead
from harmlens.guards.latent.image_inputs import EncodedImage, ImagePrompt, collate_left, encode_image, image_token_id
from harmlens.guards.latent.input_policy import mark_injections
from harmlens.guards.latent.verdict import Verdict, one_line
from harmlens.runtime import (
    ChatPrompt,
    GenerationConfig,
    HFBackend,
    PrefillRead,
    generation_config,
    hf_generate_ids,
    is_conversation,
    pad_id,
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


class GuardedModel:
    """Chat generation guarded by a LatentGuard read from the same forward pass that generation needs."""

    unread = UNREAD  # the failure for a prompt whose prefill the engine could not read

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
        self, prompts: Sequence, config: GenerationConfig | Mapping | None = None, **overrides: Any
    ) -> list[GuardedReply]:
        """Replies (greedy by default, left-padded, length-sorted batches; `config` and keyword overrides as in
        harmlens.runtime.generate); blocked prompts get the refusal. Each prompt is a string,
        a ChatPrompt, an OpenAI-style message list (a conversation) or, on a VLM, an ImagePrompt (its pixel values go
        through the model's processor; image and text prompts never share a batch)."""
        check_prompt_list(prompts)
        config = generation_config(config, **overrides)
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
        for images in (False, True):  # text and image prompts never share a batch
            group = [r for r in ready if (r[3] is not None) == images]
            if not group:
                continue
            reader = GuardRead(self.guard, group, self.block, self.unread)
            new = self._generate(group, config, reader.as_read())
            verdicts = [reader.verdict(k) for k in range(len(group))]
            verdicts = mark_injections(self.guard, [r[1] if images else prompts[r[0]] for r in group], verdicts)
            for (i, prompt, *_), ids, verdict in zip(group, new, verdicts):
                blocked = self.block and verdict.harmful
                text = (
                    self._refusal(prompt.instruction, verdict)
                    if blocked
                    else self.model.tokenizer.decode(ids, skip_special_tokens=True)
                )
                out[i] = GuardedReply(prompt.instruction, text, verdict, blocked)
        return out  # type: ignore[return-value]

    def _generate(self, group: list, config: GenerationConfig, read: PrefillRead) -> list[list[int]]:
        """New ids per prompt of one group on the hf engine: text prompts from their token ids, image prompts from their
        processor inputs (collated left; the guard reads past the expanded image)."""
        if group[0][3] is None:
            return HFBackend(self.model).generate_ids([r[1] for r in group], config, read=read)
        pid = pad_id(self.model.tokenizer)
        encode = lambda idx: collate_left([group[k][3] for k in idx], pid)[0]  # noqa: E731
        lengths = [len(r[3]) for r in group]
        stops = stop_token_ids(self.model)
        return hf_generate_ids(self.model, lengths, encode, config, stops=stops, pad=pid, read=read, desc="guarded")

    def __call__(self, prompts, **kwargs) -> str | list[str]:
        """Reply text(s) only: one for a string, ChatPrompt, ImagePrompt or message list, a list for a list of them."""
        if isinstance(prompts, (str, ChatPrompt, ImagePrompt)) or is_conversation(prompts):
            return self.generate([prompts], **kwargs)[0].text
        return [r.text for r in self.generate(prompts, **kwargs)]


def instruction_of(prompt: object) -> str:
    """The instruction a reply reports: the string itself, a rendered prompt's instruction, else ''."""
    prompt = prompt.prompt if isinstance(prompt, ImagePrompt) else prompt
    return str(getattr(prompt, "instruction", prompt)) if isinstance(prompt, (str, ChatPrompt)) else ""
