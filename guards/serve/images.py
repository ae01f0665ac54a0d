"""Images in chat requests to a VLM: OpenAI `image_url` content parts holding a base64 data URL, decoded with PIL.

The server never fetches a URL: http(s) and other remote URLs get a 400, as do malformed base64, data that is not an
image, an image over MAX_IMAGE_PIXELS and more images than the server takes (one per request).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from collections.abc import Mapping
from typing import Any

from harmlens.guards.serve.schemas import RequestError

MAX_IMAGE_PIXELS = 4096 * 4096  # checked from the header, before the pixels are decoded (decompression bombs)
IMAGE_PART_TYPES = ("image_url", "input_image", "image")
_DATA_URL = re.compile(r"data:image/[a-z0-9.+-]+;base64,(.*)", re.IGNORECASE | re.DOTALL)
_EXAMPLE = "{'type': 'image_url', 'image_url': {'url': 'data:image/png;base64,...'}}"


def take_images(raw: Any, max_images: int) -> tuple[Any, tuple[int, Any] | None]:
    """(the messages without their image parts, (index of the message with the image, the decoded RGB image) or
    None); with max_images 0 (a text model) the messages are returned untouched and the text parser refuses images."""
    if max_images < 1 or not isinstance(raw, list):
        return raw, None
    messages, found = [], []
    for i, message in enumerate(raw):
        content = message.get("content") if isinstance(message, Mapping) else None
        if not isinstance(content, list):
            messages.append(message)
            continue
        parts = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") in IMAGE_PART_TYPES:
                found.append((i, part))
            else:
                parts.append(part)
        messages.append({**message, "content": parts})
    if len(found) > max_images:
        raise RequestError(
            400, f"request has {len(found)} images; this server takes one image per request", param="messages"
        )
    if not found:
        return messages, None
    at, part = found[0]
    role = raw[at].get("role")
    if role != "user":
        raise RequestError(
            400, f"message {at} ({role}) has an image; only user messages can carry one", param="messages"
        )
    return messages, (at, decode_image(part, at))


def decode_image(part: Mapping, at: int) -> Any:
    """The RGB PIL image of an image_url part whose url is a base64 data URL (400 for anything else)."""
    from PIL import Image, UnidentifiedImageError

    param = f"messages[{at}].content"
    if part.get("type") != "image_url":
        raise RequestError(
            400, f"message {at} has a {part.get('type')!r} part; send an image as {_EXAMPLE}", param=param
        )
    spec = part.get("image_url")
    url = spec.get("url") if isinstance(spec, Mapping) else spec
    if not isinstance(url, str) or not url.strip():
        raise RequestError(400, f"message {at}: image_url needs a 'url' (a data:image/...;base64 URL)", param=param)
    url = url.strip()
    match = _DATA_URL.fullmatch(url)
    if match is None:
        scheme = url.split(":", 1)[0].lower()[:16] if ":" in url else ""
        why = f"remote image URLs ({scheme}:) are refused, this server never fetches" if scheme != "data" else ""
        raise RequestError(
            400, f"message {at}: {why or 'unsupported image URL'}; send data:image/png;base64,... inline", param=param
        )
    try:
        data = base64.b64decode("".join(match.group(1).split()), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"message {at}: the image's base64 data is malformed", param=param) from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                raise RequestError(
                    400,
                    f"message {at}: image is {width}x{height} pixels, over the limit of {MAX_IMAGE_PIXELS}",
                    param=param,
                )
            return img.convert("RGB")
    except RequestError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise RequestError(400, f"message {at}: the image data is not an image PIL can read", param=param) from None
