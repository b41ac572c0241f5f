"""Images as the writers take them: ``(H, W, 3)`` uint8 arrays (or PNG bytes, decoded)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from gradscope.errors import ArgumentTypeError

Image = Any  # (H, W, 3) or (H, W, 4) uint8 array, or PNG bytes


def image_array(image: Image) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 array from an RGB(A) array or PNG bytes.

    Raises:
        ArgumentTypeError: neither an ``(H, W, 3|4)`` array nor image bytes.
    """
    if isinstance(image, (bytes, bytearray)):
        from PIL import Image as PILImage

        with PILImage.open(io.BytesIO(bytes(image))) as img:
            return np.asarray(img.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ArgumentTypeError(
            f"log_image needs an (H, W, 3) or (H, W, 4) array or PNG bytes, got shape {arr.shape}"
        )
    if arr.dtype != np.uint8:
        arr = np.clip(np.round(arr * 255 if arr.max(initial=0) <= 1 else arr), 0, 255)
    return np.ascontiguousarray(arr[..., :3], dtype=np.uint8)


__all__ = ["Image", "image_array"]
