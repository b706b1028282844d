"""Images as the encoders take them: square uint8 (3, S, S) arrays, and their hashes."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from nest_data.errors import InputError

__all__ = ["as_images", "content_hash"]


def _image_error(index: int, what: str) -> InputError:
    return InputError(
        f"image {index}: {what}. Give uint8 RGB images as an array (B, 3, H, W) or "
        "(B, H, W, 3), a list of such (H, W, 3) arrays, PIL images, or image file paths; "
        "float images in [0, 1] can be converted with (x * 255).round().astype('uint8')."
    )


def _one_image(image: Any, index: int) -> np.ndarray:
    """One image as a square uint8 (3, S, S) array (non-square images are center-cropped)."""
    if isinstance(image, (str, os.PathLike)):
        from PIL import Image

        try:
            with Image.open(image) as img:
                image = np.asarray(img.convert("RGB"))
        except Image.DecompressionBombError as exc:
            raise _image_error(index, f"{os.fspath(image)!r} is too large to decode safely "
                                      f"({exc}); resize it first") from exc
        except (OSError, ValueError) as exc:
            raise _image_error(index, f"cannot read {os.fspath(image)!r} ({exc})") from exc
    elif type(image).__module__.startswith("PIL."):
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise _image_error(index, f"dtype is {array.dtype}, not uint8")
    if array.ndim != 3 or 3 not in (array.shape[0], array.shape[-1]):
        raise _image_error(index, f"shape {array.shape} is not (3, H, W) or (H, W, 3)")
    if array.shape[0] != 3:
        array = array.transpose(2, 0, 1)
    height, width = array.shape[1:]
    side = min(height, width)
    if side < 8:
        raise _image_error(index, f"{height}x{width} pixels is too small")
    top, left = (height - side) // 2, (width - side) // 2
    return np.ascontiguousarray(array[:, top:top + side, left:left + side])


def as_images(images: Any) -> list[np.ndarray]:
    """Normalise the image inputs :func:`encode` accepts to square uint8 (3, S, S) arrays.

    Non-square images are center-cropped to their shorter side (NEST's encoders take square
    images).

    Examples
    --------
    >>> import numpy as np
    >>> [a.shape for a in as_images(np.zeros((2, 40, 60, 3), "uint8"))]
    [(3, 40, 40), (3, 40, 40)]
    """
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return [_one_image(image, i) for i, image in enumerate(images)]
    if isinstance(images, (list, tuple)):
        return [_one_image(image, i) for i, image in enumerate(images)]
    return [_one_image(images, 0)]


def content_hash(image: np.ndarray) -> str:
    """SHA-256 of an image's shape and pixels (after the center crop)."""
    return hashlib.sha256(str(image.shape).encode() + image.tobytes()).hexdigest()
