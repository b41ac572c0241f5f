"""Values as the writers take them: ``(H, W, 3)`` uint8 images (or PNG bytes, decoded), numbers."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np

from gradscope.errors import ArgumentTypeError

Image = Any  # (H, W, 3) or (H, W, 4) uint8 array, or PNG bytes


def image_array(image: Image) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 array from an RGB(A) array or PNG bytes.

    A float array with values in [0, 1] is scaled to [0, 255]; NaN pixels are black.

    Raises:
        ArgumentTypeError: neither a non-empty ``(H, W, 3|4)`` array of real numbers nor
            image bytes (bytes that are no image say so).
    """
    if isinstance(image, (bytes, bytearray)):
        from PIL import Image as PILImage
        from PIL import UnidentifiedImageError

        try:
            with PILImage.open(io.BytesIO(bytes(image))) as img:
                return np.asarray(img.convert("RGB"))
        except UnidentifiedImageError:
            raise ArgumentTypeError(
                f"log_image got {len(image)} bytes that are no image (PNG bytes or an "
                "(H, W, 3) array are accepted)"
            ) from None
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.size == 0:
        raise ArgumentTypeError(
            "log_image needs a non-empty (H, W, 3) or (H, W, 4) array or PNG bytes, got "
            f"shape {arr.shape}"
        )
    if arr.dtype.kind not in "buif":
        raise ArgumentTypeError(f"log_image needs real pixel values, got dtype {arr.dtype}")
    if arr.dtype != np.uint8:
        arr = np.where(np.isnan(arr), 0.0, arr.astype(float))  # inf: clipped to 0 or 255
        finite = arr[np.isfinite(arr)]
        arr = np.clip(np.round(arr * 255 if finite.max(initial=0) <= 1 else arr), 0, 255)
    return np.ascontiguousarray(arr[..., :3], dtype=np.uint8)


def numbers(scalars: Mapping[str, Any]) -> dict[str, float]:
    """``{tag: float(value)}``, checked: a value that is not a number is an error naming it.

    Raises:
        ArgumentTypeError: a value is not a real number (nor a string of one).
    """
    out: dict[str, float] = {}
    for tag, value in scalars.items():
        try:
            out[str(tag)] = float(value)
        except (TypeError, ValueError):
            raise ArgumentTypeError(
                f"log_scalars: the value of {str(tag)!r} must be a number, got "
                f"{type(value).__name__} {str(value)[:40]!r}"
            ) from None
    return out


__all__ = ["Image", "image_array", "numbers"]
