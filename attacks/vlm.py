"""Generation for prompts that carry an image token: the model's processor expands it and adds pixel_values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from harmlens.errors import HarmlensError
from harmlens.runtime import ChatPrompt, GenerationConfig, HFBackend, generation_config

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def generate_with_images(
    model: TransformerBridge,
    processor,
    prompts: Sequence[ChatPrompt],
    images: Sequence,
    config: GenerationConfig | Mapping | None = None,
) -> list[str]:
    """Replies for perturbed prompts and their images (one per prompt), left-padded batches, as `config` says
    (a GenerationConfig; None: the defaults, greedy).

    The processor contract is the Hugging Face one:
    processor(text=[...], images=[...], padding=True, return_tensors='pt') -> input_ids, attention_mask, pixel_values.
    """
    if processor is None:
        raise HarmlensError("image settings need the model's processor (evaluate_asr(..., processor=...))")
    return HFBackend(model, processor).generate(list(prompts), generation_config(config), images=list(images))
