"""Images as the encoders take them: square uint8 (3, S, S) arrays, and their hashes."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from nest_data.errors import InputError

__all__ = ["as_images", "content_hash", "image_labels"]


def _image_error(index: int, what: str) -> InputError:
    return InputError(
        f"image {index}: {what}. Give uint8 RGB images (or integers of any integer dtype "
        "in 0..255) as an array (B, 3, H, W) or (B, H, W, 3), a list of such (H, W, 3) "
        "arrays, PIL images, or image file paths; float images in [0, 1] can be converted "
        "with (x * 255).round().astype('uint8')."
    )


def _as_uint8(array: np.ndarray, index: int) -> np.ndarray:
    """Integer pixels (any integer dtype) in 0..255 as uint8; anything else refused.

    NED took integer images in [0, 255] of any integer dtype; so does nest-data.

    Examples
    --------
    >>> _as_uint8(np.array([[[0, 255]]], dtype=np.int64), 0).dtype
    dtype('uint8')
    >>> _as_uint8(np.array([[[0, 256]]], dtype=np.int16), 3)
    Traceback (most recent call last):
    ...
    nest_data.errors.InputError: image 3: int16 values from 0 to 256 lie outside 0..255. ...
    """
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind not in "iu":  # floats, booleans, objects, strings
        raise _image_error(index, f"dtype is {array.dtype}, not uint8")
    if array.size:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise _image_error(index, f"{array.dtype} values from {low} to {high} lie outside "
                                      "0..255")
    return array.astype(np.uint8)


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
    if array.ndim != 3 or 3 not in (array.shape[0], array.shape[-1]):
        raise _image_error(index, f"shape {array.shape} is not (3, H, W) or (H, W, 3)")
    if array.shape[0] != 3:
        array = array.transpose(2, 0, 1)
    height, width = array.shape[1:]
    side = min(height, width)
    if side < 8:
        raise _image_error(index, f"{height}x{width} pixels is too small")
    top, left = (height - side) // 2, (width - side) // 2
    return _as_uint8(np.ascontiguousarray(array[:, top:top + side, left:left + side]), index)


def _items(images: Any) -> list[Any]:
    """The images given, one item per image (a 4-D array is a batch)."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]


def as_images(images: Any) -> list[np.ndarray]:
    """Normalise the image inputs :func:`encode` accepts to square uint8 (3, S, S) arrays.

    Non-square images are center-cropped to their shorter side (NEST's encoders take square
    images).  Integer arrays of any integer dtype are taken when their values lie in
    0..255, as NED took them.

    Raises
    ------
    InputError
        An image that is not RGB, too small, unreadable, not of an integer dtype, or with
        values outside 0..255; the message names the image by its position.

    Examples
    --------
    >>> import numpy as np
    >>> [a.shape for a in as_images(np.zeros((2, 40, 60, 3), "uint8"))]
    [(3, 40, 40), (3, 40, 40)]
    >>> as_images(np.full((1, 3, 8, 8), 255, dtype=np.int64))[0].dtype
    dtype('uint8')
    """
    return [_one_image(image, i) for i, image in enumerate(_items(images))]


def image_labels(images: Any, hashes: list[str]) -> list[str]:
    """Default labels of the images given: file names for paths, content hashes otherwise.

    An image given as a path is labelled by its file name (``cat.jpg``), or by the path
    as given when two files share a name; any other image by the first 16 hexadecimal
    digits of its :func:`content_hash` (``hashes``, one per image).

    Examples
    --------
    >>> image_labels(["a/cat.jpg", "b/dog.png"], ["0" * 64, "1" * 64])
    ['cat.jpg', 'dog.png']
    >>> image_labels(["a/cat.jpg", "b/cat.jpg"], ["0" * 64, "1" * 64])
    ['a/cat.jpg', 'b/cat.jpg']
    >>> image_labels(np.zeros((1, 8, 8, 3), "uint8"), ["abcdef0123456789" * 4])
    ['abcdef0123456789']
    """
    items = _items(images)
    paths = [os.fspath(i) if isinstance(i, (str, os.PathLike)) else None for i in items]
    names = [os.path.basename(p) if p is not None else None for p in paths]
    given = [n for n in names if n is not None]
    if len(set(given)) < len(given):
        names = paths
    return [n if n is not None else h[:16] for n, h in zip(names, hashes, strict=True)]


def content_hash(image: np.ndarray) -> str:
    """SHA-256 of an image's shape and pixels (after the center crop)."""
    return hashlib.sha256(str(image.shape).encode() + image.tobytes()).hexdigest()
