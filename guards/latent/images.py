"""Latent Guard verdicts for prompts that carry an image (RMA image settings on a VLM): pixel_values in the forward.

The image evaluation sets and the evaluate_guard detector for them are fitting/evaluation code:
harmlens.guards.fitting.images (image_sets, ImageAwareDetector)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from harmlens.errors import HarmlensError
from harmlens.guards.latent.guard import LatentGuard
from harmlens.guards.latent.image_inputs import (  # noqa: F401  (re-exported: they lived here first)
    ImagePrompt,
    added_bos,
    encode_image,
    image_position,
    image_token_id,
    read_positions,
)
from harmlens.guards.latent.input_policy import mark_injections
from harmlens.guards.latent.verdict import Verdict, one_line
from harmlens.runtime import model_device, resid_hook_name, role_template


def image_acts(guard: LatentGuard, items: Sequence[ImagePrompt], processor) -> torch.Tensor:
    """[n, n_layers, d] at the guard's position (t_inst or t_post_inst), or [n, n_layers, n_pos, d] for a span guard
    (padded by repeating t_inst), one forward per prompt with everything the processor returns (pixel_values, Qwen-VL's
    image_grid_thw) over its tokens (a BOS the processor prepends, as LLaVA-1.5's does, shifts the positions read)."""
    model = guard._require_model()
    names = [resid_hook_name(model, layer) for layer in guard.layers]
    device, out = model_device(model), []
    for item in items:
        encoded = encode_image(guard, model, item, processor)
        with torch.no_grad():
            extra = {k: v.to(device) for k, v in encoded.inputs.items() if k != "input_ids"}
            run: Any = model.run_with_cache  # pixel_values and friends go through **kwargs
            _, cache = run(encoded.inputs["input_ids"].to(device), **extra, names_filter=lambda n: n in names)
        out.append(torch.stack([cache[n][0, encoded.positions] for n in names]).float().cpu())  # [n_layers, n_pos, d]
    width = max(a.shape[1] for a in out)
    out = [torch.cat([a, a[:, -1:].expand(-1, width - a.shape[1], -1)], 1) for a in out]
    return torch.stack(out) if guard.reads_span else torch.stack(out)[:, :, 0]


def image_prompt(guard: LatentGuard, prompt, image, processor=None, *, at: int | None = None) -> ImagePrompt:
    """An ImagePrompt for a string or a conversation whose user message `at` (default: the last) carries `image`: the
    image token goes where the model's chat template puts an image part, at the start of that message (RMA's img_in);
    the message texts stay plain text, never template structure."""
    model = guard._require_model()
    processor = processor if processor is not None else getattr(model, "processor", None)
    image_token_id(model, processor)  # a text model is told so in one line
    text = role_template(model, processor=processor).image_text
    if text is None:
        raise HarmlensError("this model's chat template has no image token: image prompts need a VLM")
    return ImagePrompt(guard.prepare(prompt, image_text=text, image_at=at)[0], image)


def check_images(guard: LatentGuard, items: Sequence[ImagePrompt], processor) -> list[Verdict]:
    """Verdicts for image prompts; an internal error fails closed per prompt and role markers in the instruction are
    marked (and flagged), like LatentGuard.check."""
    out = []
    for item in items:
        try:
            out.append(guard.verdicts_from_acts(image_acts(guard, [item], processor))[0])
        except Exception as exc:  # noqa: BLE001 - fail closed, say why
            out.append(guard.failed(f"internal error: {one_line(exc)}"))
    prompts = [item.prompt if isinstance(item, ImagePrompt) else item for item in items]
    return mark_injections(guard, prompts, out)  # as GuardedModel does
