"""Image evaluation sets (RMA's image settings on a VLM) and the evaluate_guard detector that scores them: what a
VLM guard's fit and evaluation use beside the guard itself (harmlens.guards.latent.images runs the image reads)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from harmlens.attacks.images import load_images
from harmlens.attacks.settings import get_setting, perturb
from harmlens.errors import HarmlensError
from harmlens.guards.latent.guard import LatentGuard
from harmlens.guards.latent.image_inputs import ImagePrompt
from harmlens.guards.latent.images import check_images
from harmlens.runtime import role_template

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

IMAGE_SETTINGS = ("img_in", "img_in+swap", "img_end", "img_end+swap", "img_out", "img_out+swap")


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
