"""Latent Guard verdicts for prompts that carry an image (RMA image settings on a VLM): pixel_values in the forward."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from harmlens.attacks.images import load_images
from harmlens.attacks.settings import get_setting, perturb
from harmlens.attacks.template import role_template
from harmlens.errors import HarmlensError
from harmlens.guards.latent.guard import LatentGuard
from harmlens.guards.latent.verdict import Verdict, one_line
from harmlens.probes.activations import resid_hook_name
from harmlens.probes.chat import ChatPrompt
from harmlens.probes.loading import model_device

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

IMAGE_SETTINGS = ("img_in", "img_in+swap", "img_end", "img_end+swap", "img_out", "img_out+swap")


@dataclass(frozen=True)
class ImagePrompt:
    """A rendered prompt whose image token stands for `image` (a PIL image)."""

    prompt: ChatPrompt
    image: object


def image_position(prompt: ChatPrompt, position: int, image_id: int, n_image_tokens: int) -> int:
    """Where `position` of the unexpanded prompt lands once each image token becomes n_image_tokens tokens."""
    before = sum(t == image_id for t in prompt.input_ids[:position])
    return position + before * (n_image_tokens - 1)


def read_positions(guard: LatentGuard, prompt: ChatPrompt, image_id: int, n_image: int) -> list[int]:
    """The guard's positions (LatentGuard.select) mapped past the image tokens; a span guard skips the image's own
    tokens, which are not text."""
    positions: Sequence[int] = guard.select(prompt)
    if guard.position == "span":
        positions = [p for p in positions if prompt.input_ids[p] != image_id]
    return [image_position(prompt, p, image_id, n_image) for p in positions]


def added_bos(processor_ids: Sequence[int], prompt_ids: Sequence[int], bos_id: int | None) -> int:
    """1 when the processor prepended a BOS the rendered prompt lacks (LLaVA-1.5's `<s>`), else 0."""
    first = prompt_ids[0] if prompt_ids else None
    return int(bos_id is not None and len(processor_ids) > 0 and processor_ids[0] == bos_id and first != bos_id)


def image_acts(guard: LatentGuard, items: Sequence[ImagePrompt], processor) -> torch.Tensor:
    """[n, n_layers, d] at the guard's position (t_inst or t_post_inst), or [n, n_layers, n_pos, d] for a span guard
    (padded by repeating t_inst), one forward per prompt with everything the processor returns (pixel_values, Qwen-VL's image_grid_thw) over its tokens (a BOS the
    processor prepends, as LLaVA-1.5's does, shifts the positions read)."""
    model = guard._require_model()
    tok = getattr(processor, "tokenizer", None) or model.tokenizer
    image_id = tok.convert_tokens_to_ids(processor.image_token)
    names = [resid_hook_name(model, layer) for layer in guard.layers]
    device, out = model_device(model), []
    for item in items:
        enc = processor(text=[item.prompt.text], images=[item.image], return_tensors="pt")
        ids, n_images = enc["input_ids"], sum(t == image_id for t in item.prompt.input_ids)
        n_image = int((ids[0] == image_id).sum()) // max(1, n_images)
        shift = added_bos(ids[0].tolist(), item.prompt.input_ids, tok.bos_token_id)
        expanded = [t for t in item.prompt.input_ids for _ in range(n_image if t == image_id else 1)]
        if ids[0, shift:].tolist() != expanded:
            raise HarmlensError("the processor's tokens do not match the rendered prompt's (image expansion)")
        pos = [shift + p for p in read_positions(guard, item.prompt, image_id, n_image)]
        with torch.no_grad():
            extra = {k: v.to(device) for k, v in enc.items() if k != "input_ids" and isinstance(v, torch.Tensor)}
            run: Any = model.run_with_cache  # pixel_values and friends go through **kwargs
            _, cache = run(ids.to(device), **extra, names_filter=lambda n: n in names)
        out.append(torch.stack([cache[n][0, pos] for n in names]).float().cpu())  # [n_layers, n_pos, d]
    width = max(a.shape[1] for a in out)
    out = [torch.cat([a, a[:, -1:].expand(-1, width - a.shape[1], -1)], 1) for a in out]
    return torch.stack(out) if guard.position == "span" else torch.stack(out)[:, :, 0]


def check_images(guard: LatentGuard, items: Sequence[ImagePrompt], processor) -> list[Verdict]:
    """Verdicts for image prompts; an internal error fails closed per prompt, like LatentGuard.check."""
    out = []
    for item in items:
        try:
            out.append(guard.verdicts_from_acts(image_acts(guard, [item], processor))[0])
        except Exception as exc:  # noqa: BLE001 - fail closed, say why
            out.append(guard.failed(f"internal error: {one_line(exc)}"))
    return out


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
