"""Images for the image settings: PIL images or paths, one for every prompt or one reused (as the RMA paper does)."""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path

from harmlens.errors import HarmlensError

N_IMAGES = 8  # built-in synthetic images


def load_images(images, n: int) -> list:
    """n RGB PIL images from a PIL image, a path, "builtin" (one seeded synthetic image), or a list of 1 or n of those;
    HarmlensError if missing/unreadable."""
    if isinstance(images, str) and images == "builtin":
        return builtin_images(1) * n
    if images is None:
        raise HarmlensError(
            "image settings need images=: a PIL image or an image path (one image may serve every prompt)"
        )
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
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)  # over MAX_IMAGE_PIXELS: refuse
                with Image.open(path) as img:
                    return img.convert("RGB")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise HarmlensError(f"{path} is too large to decode (decompression bomb): {exc}") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise HarmlensError(f"{path} is not a readable image: {exc}") from None
    raise HarmlensError(f"an image must be a PIL image or a path, got {type(image).__name__}")


def builtin_images(n: int = N_IMAGES, *, seed: int = 0, size: int = 64) -> list:
    """n seeded synthetic RGB images (gradient background, random shapes) drawn by code: no files, no licence."""
    from PIL import Image, ImageDraw

    if n < 1:
        raise HarmlensError("builtin_images needs n >= 1")
    rng, out = random.Random(seed), []
    for _ in range(n):
        a, b = [tuple(rng.randrange(256) for _ in range(3)) for _ in range(2)]
        img = Image.new("RGB", (size, size))
        px = img.load()
        assert px is not None  # a new in-memory image always has pixel access
        for y in range(size):
            for x in range(size):
                t = (x + y) / (2 * size - 2)
                px[x, y] = tuple(int(a[c] * (1 - t) + b[c] * t) for c in range(3))
        draw = ImageDraw.Draw(img)
        for _ in range(rng.randint(2, 5)):
            x0, y0 = rng.randrange(size - 8), rng.randrange(size - 8)
            box = (x0, y0, rng.randint(x0 + 6, size), rng.randint(y0 + 6, size))
            fill = tuple(rng.randrange(256) for _ in range(3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        out.append(img)
    return out
