"""Generation for prompts that carry an image token: the model's processor expands it and adds pixel_values."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from harmlens.errors import HarmlensError
from harmlens.runtime import ChatPrompt, HFBackend

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def generate_with_images(
    model: TransformerBridge,
    processor,
    prompts: Sequence[ChatPrompt],
    images: Sequence,
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
) -> list[str]:
    """Replies for perturbed prompts and their images (one per prompt), left-padded batches, greedy by default.

    The processor contract is the Hugging Face one:
    processor(text=[...], images=[...], padding=True, return_tensors='pt') -> input_ids, attention_mask, pixel_values.
    """
    if processor is None:
        raise HarmlensError("image settings need the model's processor (evaluate_asr(..., processor=...))")
    return HFBackend(model, processor).generate(
        list(prompts),
        images=list(images),
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        do_sample=do_sample,
        temperature=temperature,
        seed=seed,
    )
