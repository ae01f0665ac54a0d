"""The VLM organism: LLaVA (tiny seeded CLIP tower + projector) on the text organism's LM, safety-tuned with images."""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from harmlens.attacks.images import N_IMAGES, builtin_images  # noqa: F401  (re-exported: the organism's images)
from harmlens.errors import HarmlensError

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from harmlens.guards.tuning.adapter import Adapter
    from harmlens.guards.tuning.training import TrainConfig

IMAGE_TOKEN = "<image>"
# A tiny CLIP tower: a 32x32 image in 8x8 patches gives 16 image tokens (the CLS token is dropped).
VISION = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": 8,
}
_MACRO = (
    "{%- macro harmlens_content(content) -%}{%- if content is string -%}{{ content }}{%- else -%}"
    "{%- for part in content if part['type'] == 'image' -%}" + IMAGE_TOKEN + "{%- endfor -%}"
    "{%- for part in content if part['type'] == 'text' -%}{{ part['text'] }}{%- endfor -%}"
    "{%- endif -%}{%- endmacro -%}"
)


def vlm_chat_template(template: str) -> str:
    """The text template extended to list-of-parts content; every image is rendered at the start of its turn."""
    if not template or "message['content']" not in template:
        raise HarmlensError("cannot extend this chat template for images: it has no message['content'] expression")
    return _MACRO + template.replace("message['content']", "harmlens_content(message['content'])")


def assemble_vlm(lm, tokenizer, *, seed: int = 0, vision: dict | None = None) -> tuple:
    """(LlavaForConditionalGeneration, LlavaProcessor): lm's weights as the language model, a seeded CLIP tower and
    projector, an image token added to (a copy of) the tokenizer and the image-first chat template."""
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        GenerationConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from harmlens.guards.tuning.adapter import unwrap_model

    lm = unwrap_model(lm)
    if not hasattr(lm, "model") or not hasattr(lm.model, "embed_tokens"):
        raise HarmlensError(f"cannot build a VLM on {type(lm).__name__}: need a decoder-only *ForCausalLM model")
    if IMAGE_TOKEN in tokenizer.get_vocab():
        raise HarmlensError(f"the tokenizer already has an {IMAGE_TOKEN} token: is this already a VLM?")
    vision = {**VISION, **(vision or {})}
    tok = copy.deepcopy(tokenizer)
    tok.add_tokens([IMAGE_TOKEN], special_tokens=True)
    tok.chat_template = vlm_chat_template(tokenizer.chat_template)
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    tied = bool(getattr(lm.config, "tie_word_embeddings", False))
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(**vision),
        text_config=lm.config.to_dict(),
        image_token_index=image_id,
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=tied,
    )
    dtype = next(lm.parameters()).dtype
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vlm = LlavaForConditionalGeneration(cfg).to(dtype)
        vlm.model.language_model.load_state_dict(lm.model.state_dict(), strict=True)
        if not tied:
            vlm.lm_head.load_state_dict(lm.lm_head.state_dict())
        vlm.resize_token_embeddings(len(tok))  # the new row: mean and covariance of the old ones, seeded
    eos, pad = tok.eos_token_id, tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    vlm.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=eos, pad_token_id=pad)
    vlm.config.name_or_path = ""
    vlm.eval()
    side = vision["image_size"]
    proc = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side}),
        tokenizer=tok,
        patch_size=vision["patch_size"],
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token=IMAGE_TOKEN,
        chat_template=tok.chat_template,
    )
    return vlm, proc


def n_image_tokens(processor) -> int:
    """Image tokens one image expands to (16 for the organism's 32x32 image in 8x8 patches)."""
    side = processor.image_processor.crop_size["height"]
    return (side // processor.patch_size) ** 2


def image_prompt_transform(tokenizer, processor) -> Callable[[str, int], str]:
    """A train() prompt_transform putting one expanded image right after the user header (the default position)."""
    from harmlens.runtime import ChatFormat

    prefix = ChatFormat.from_tokenizer(tokenizer).prefix
    image = processor.image_token * n_image_tokens(processor)

    def transform(prompt: str, i: int) -> str:
        if not prompt.startswith(prefix):
            raise HarmlensError(f"training prompt {i} does not start with the chat template's user header")
        return prefix + image + prompt[len(prefix) :]

    return transform


def image_batches(
    processor, images: Sequence, n_examples: int, *, seed: int = 0
) -> Callable[[Sequence[int]], dict[str, torch.Tensor]]:
    """A train() batch_inputs: example i gets a seeded choice of `images` as pixel_values."""
    pix = processor.image_processor(list(images), return_tensors="pt")["pixel_values"]
    rng = random.Random(seed)
    choice = [rng.randrange(len(pix)) for _ in range(n_examples)]
    return lambda idx: {"pixel_values": pix[[choice[i] for i in idx]]}


def load_vlm(path: str | Path, *, device=None, dtype=None) -> TransformerBridge:
    """A saved VLM organism as a TransformerBridge, its processor at `.processor` and card at `.harmlens_organism`."""
    from transformers import AutoProcessor

    from harmlens.runtime import load_model

    path = Path(path)
    model = load_model(str(path), device=device, dtype=dtype)
    model.processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
    card = path / "card.json"
    model.harmlens_organism = json.loads(card.read_text(encoding="utf-8")) if card.is_file() else None
    return model


def train_vlm(
    vlm, processor, examples, *, config: TrainConfig, images: Sequence | None = None, progress: bool = True
) -> Adapter:
    """LoRA-train the VLM with an image in the default position of every prompt; returns the Adapter."""
    from harmlens.guards.tuning.training import train

    images = builtin_images(seed=config.seed) if images is None else images
    t0 = time.perf_counter()
    adapter = train(
        vlm,
        examples,
        config=config,
        tokenizer=processor.tokenizer,
        progress=progress,
        prompt_transform=image_prompt_transform(processor.tokenizer, processor),
        batch_inputs=image_batches(processor, images, len(examples), seed=config.seed),
    )
    adapter.meta["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return adapter
