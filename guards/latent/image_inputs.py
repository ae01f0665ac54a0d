"""Image prompts on a VLM: the ImagePrompt item, where a guard's positions land once the processor expands the image
token (and prepends LLaVA-1.5's `<s>`), and left-padded batches of processor outputs for generation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from harmlens.errors import HarmlensError
from harmlens.guards.latent.verdict import one_line
from harmlens.runtime import ChatPrompt


@dataclass(frozen=True)
class ImagePrompt:
    """A rendered prompt whose image token stands for `image` (a PIL image)."""

    prompt: ChatPrompt
    image: object


class PositionReader(Protocol):
    """What the position mapping needs from a guard (LatentGuard satisfies it)."""

    @property
    def reads_span(self) -> bool:
        """Whether it reads every token up to t_inst (a span) rather than one position."""
        ...

    def select(self, prompt: ChatPrompt, width: int = 1) -> tuple[int, ...]:
        """Positions read in the rendered prompt."""
        ...


@dataclass(frozen=True)
class EncodedImage:
    """One image prompt through the processor: its model inputs (a batch of one) and the guard's positions in them."""

    inputs: dict[str, torch.Tensor]
    positions: list[int]

    def __len__(self) -> int:
        return int(self.inputs["input_ids"].shape[1])


def image_position(prompt: ChatPrompt, position: int, image_id: int, n_image_tokens: int) -> int:
    """Where `position` of the unexpanded prompt lands once each image token becomes n_image_tokens tokens."""
    before = sum(t == image_id for t in prompt.input_ids[:position])
    return position + before * (n_image_tokens - 1)


def read_positions(guard: PositionReader, prompt: ChatPrompt, image_id: int, n_image: int) -> list[int]:
    """The guard's positions (LatentGuard.select) mapped past the image tokens; a span guard skips the image's own
    tokens, which are not text."""
    positions: Sequence[int] = guard.select(prompt)
    if guard.reads_span:
        positions = [p for p in positions if prompt.input_ids[p] != image_id]
    return [image_position(prompt, p, image_id, n_image) for p in positions]


def added_bos(processor_ids: Sequence[int], prompt_ids: Sequence[int], bos_id: int | None) -> int:
    """1 when the processor prepended a BOS the rendered prompt lacks (LLaVA-1.5's `<s>`), else 0."""
    first = prompt_ids[0] if prompt_ids else None
    return int(bos_id is not None and len(processor_ids) > 0 and processor_ids[0] == bos_id and first != bos_id)


def image_token_id(model, processor) -> int:
    """The processor's image token id (HarmlensError when there is no processor or it names no image token)."""
    token = getattr(processor, "image_token", None)
    if processor is None or not isinstance(token, str):
        raise HarmlensError("image prompts need a vision-language model and its processor (processor.image_token)")
    tok = getattr(processor, "tokenizer", None) or model.tokenizer
    return int(tok.convert_tokens_to_ids(token))


def encode_image(guard: PositionReader, model, item: ImagePrompt, processor) -> EncodedImage:
    """The processor's inputs for one image prompt (pixel_values, Qwen-VL's image_grid_thw, ...) and the guard's
    positions in its tokens; HarmlensError unless those tokens are the rendered prompt's with the image expanded."""
    if not isinstance(item, ImagePrompt) or not isinstance(item.prompt, ChatPrompt):
        raise HarmlensError(f"expected an ImagePrompt (a ChatPrompt and an image), got {type(item).__name__}")
    tok = getattr(processor, "tokenizer", None) or model.tokenizer
    image_id = image_token_id(model, processor)
    n_images = sum(t == image_id for t in item.prompt.input_ids)
    if n_images != 1:
        raise HarmlensError(f"an image prompt needs exactly one image token in its prompt, found {n_images}")
    if item.prompt.text.count(processor.image_token) != 1:  # the processor reads text: a typed token would expand
        raise HarmlensError("the prompt's text holds the image token as typed text too; the processor cannot read it")
    try:
        enc = processor(text=[item.prompt.text], images=[item.image], return_tensors="pt")
    except Exception as exc:  # noqa: BLE001 - e.g. not an image, or an image token typed in the text
        raise HarmlensError(f"the processor cannot read this image prompt: {one_line(exc)}") from None
    ids = enc["input_ids"]
    n_image = int((ids[0] == image_id).sum())
    shift = added_bos(ids[0].tolist(), item.prompt.input_ids, tok.bos_token_id)
    expanded = [t for t in item.prompt.input_ids for _ in range(n_image if t == image_id else 1)]
    if ids[0, shift:].tolist() != expanded:
        raise HarmlensError("the processor's tokens do not match the rendered prompt's (image expansion)")
    context = getattr(getattr(model, "cfg", None), "n_ctx", None)
    if isinstance(context, int) and ids.shape[1] > context:
        raise HarmlensError(f"image prompt is {ids.shape[1]} tokens with its image, over the context of {context}")
    positions = [shift + p for p in read_positions(guard, item.prompt, image_id, n_image)]
    return EncodedImage({k: v for k, v in enc.items() if isinstance(v, torch.Tensor)}, positions)


def padded_positions(positions: Sequence[int], width: int) -> list[int]:
    """Positions padded to `width` by repeating the last one (t_inst): a repeat never changes a span's maximum."""
    return [*positions, *[positions[-1]] * (width - len(positions))]


def collate_left(items: Sequence[EncodedImage], pad_id: int) -> tuple[dict[str, Any], torch.Tensor]:
    """(one left-padded batch, each row's offset): input_ids padded with pad_id, other per-token tensors (attention
    mask, Qwen-VL's mm_token_type_ids) with 0, the rest (pixel_values, image_grid_thw) concatenated along dim 0."""
    width = max(len(e) for e in items)
    offsets = torch.tensor([width - len(e) for e in items])
    batch: dict[str, Any] = {}
    for key in items[0].inputs:
        values = [e.inputs[key] for e in items]
        if all(v.dim() == 2 and v.shape == e.inputs["input_ids"].shape for v, e in zip(values, items)):
            fill = pad_id if key == "input_ids" else 0
            batch[key] = torch.stack(
                [torch.cat([torch.full((int(off),), fill, dtype=v.dtype), v[0]]) for v, off in zip(values, offsets)]
            )
        else:
            batch[key] = torch.cat(values)
    return batch, offsets
