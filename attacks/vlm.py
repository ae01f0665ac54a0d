"""Generation for prompts that carry an image token: the model's processor expands it and adds pixel_values."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from harmlens.errors import HarmlensError
from harmlens.probes.chat import ChatPrompt
from harmlens.probes.loading import model_device


def generate_with_images(
    model,
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

    Not yet run on a real VLM (harmlens has no VLM organism); the processor contract is the Hugging Face one:
    processor(text=[...], images=[...], padding=True, return_tensors='pt') -> input_ids, attention_mask, pixel_values.
    """
    if processor is None:
        raise HarmlensError("image settings need the model's processor (evaluate_asr(..., processor=...))")
    if len(images) != len(prompts):
        raise HarmlensError(f"{len(images)} images for {len(prompts)} prompts")
    tok = getattr(processor, "tokenizer", None) or model.tokenizer
    hf, device = getattr(model, "original_model", model), model_device(model)
    kwargs = dict(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    )
    if do_sample:
        kwargs["temperature"] = temperature
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    old_side = getattr(tok, "padding_side", "right")
    tok.padding_side = "left"
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = processor(
                text=[prompts[i].text for i in idx], images=[images[i] for i in idx], padding=True, return_tensors="pt"
            )
            if "pixel_values" not in enc:
                raise HarmlensError("the processor returned no pixel_values: is this a vision-language model?")
            enc = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in enc.items()}
            with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed + start)
                seqs = hf.generate(**enc, **kwargs)
            width = enc["input_ids"].shape[1]
            for row, i in enumerate(idx):
                out[i] = tok.decode(seqs[row, width:], skip_special_tokens=True)
    finally:
        tok.padding_side = old_side
    return out
