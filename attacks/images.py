"""Images for the image settings: PIL images or paths, one for every prompt or one reused (as the RMA paper does)."""

from __future__ import annotations

import os
from pathlib import Path

from probes.errors import HarmlensError


def load_images(images, n: int) -> list:
    """n RGB PIL images from a PIL image, a path, or a list of 1 or n of those; HarmlensError if missing/unreadable."""
    if images is None:
        raise HarmlensError("image settings need images=: a PIL image or an image path (one image may serve every prompt)")
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if len(items) not in (1, n):
        raise HarmlensError(f"got {len(items)} images for {n} prompts: give one image or one per prompt")
    loaded = [_load(x) for x in items]
    return loaded * n if len(loaded) == 1 else loaded


def _load(image):
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise HarmlensError(f"image not found: {path}")
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise HarmlensError(f"{path} is not a readable image: {exc}") from None
    raise HarmlensError(f"an image must be a PIL image or a path, got {type(image).__name__}")
