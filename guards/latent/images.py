"""Latent Guard verdicts for prompts that carry an image (RMA image settings on a VLM): pixel_values in the forward."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from harmlens.attacks.images import load_images
from harmlens.attacks.settings import get_setting, perturb
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

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

IMAGE_SETTINGS = ("img_in", "img_in+swap", "img_end", "img_end+swap", "img_out", "img_out+swap")


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
    return torch.stack(out) if guard.position == "span" else torch.stack(out)[:, :, 0]


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


class ImageAwareDetector:
    """A latent-guard detector for evaluate_guard that also scores ImagePrompts (processor + pixel_values); not
    shared with other latent detectors, since image prompts need their own forward."""

    def __init__(self, guard: LatentGuard, processor, name: str = "latent_guard") -> None:
        self.guard, self.processor, self.name = guard, processor, name

    def predict(self, prompts: Sequence) -> list[tuple[float, bool]]:
        """(score, flagged) per prompt; image prompts and text prompts may be mixed."""
        images = [i for i, p in enumerate(prompts) if isinstance(p, ImagePrompt)]
        texts = [i for i, p in enumerate(prompts) if not isinstance(p, ImagePrompt)]
        out: list = [None] * len(prompts)
        verdicts = check_images(self.guard, [prompts[i] for i in images], self.processor) if images else []
        verdicts_t = self.guard.check([prompts[i] for i in texts]) if texts else []
        for i, v in zip(images + texts, verdicts + verdicts_t):
            out[i] = (v.score, v.harmful)
        return out


def image_sets(
    model: TransformerBridge,
    harmful: Sequence[str],
    harmless: Sequence[str],
    *,
    images="builtin",
    settings: Sequence[str] = IMAGE_SETTINGS,
) -> dict:
    """{'rma_<setting>': ([ImagePrompt], harmful?)} for each image setting, harmful and harmless ('_harmless')."""
    processor = getattr(model, "processor", None)
    if processor is None:
        raise HarmlensError("image sets need a VLM with its processor (e.g. harmlens.guards.load_organism('vlm'))")
    template = role_template(model, processor=processor)
    if not template.supports_images:
        raise HarmlensError("this model's chat template has no image token: image settings need a VLM")
    picture = load_images(images, 1)[0]
    sets = {}
    for name in settings:
        if not get_setting(name).needs_image:
            raise HarmlensError(f"{name!r} is not an image setting; choose from {', '.join(IMAGE_SETTINGS)}")
        for prompts, harmful_set, suffix in ((harmful, True, ""), (harmless, False, "_harmless")):
            sets[f"rma_{name}{suffix}"] = (
                [ImagePrompt(perturb(template, p, name), picture) for p in prompts],
                harmful_set,
            )
    return sets
