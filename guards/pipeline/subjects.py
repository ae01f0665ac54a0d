"""The model a guards run works on: the organism (built on first use), the embedded base model, or a folder/Hub name."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def load_subject(spec: str | None, device=None, dtype=None):
    """'organism[:text|vlm]' (built on first use), 'base' (embedded SmolLM2) or a model folder / Hub name; dtype None
    is the loader's default (harmlens.validate.default_dtype)."""
    from harmlens.runtime import load_model

    if spec is None or spec == "organism" or spec.startswith("organism:"):
        from harmlens.guards.organisms.build import load_organism

        return load_organism((spec or "organism").partition(":")[2] or "text", device=device, dtype=dtype)
    return load_model(None if spec == "base" else spec, device=device, dtype=dtype)


def vlm_processor(model: TransformerBridge):
    """The processor of a LLaVA-style model (its image settings need images and pixel_values), else None."""
    from harmlens.runtime import role_template

    processor = getattr(model, "processor", None)
    return processor if processor is not None and role_template(model, processor=processor).supports_images else None
