"""Smooth synthetic images, as arrays, PNG folders or a Zarr group (the inputs of ``generate``)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from nest_data.synthetic.responses import _rng


def test_images(n: int, size: int | tuple[int, int] = 227, *, seed: int = 0) -> np.ndarray:
    """``n`` smooth random uint8 RGB images ``(n, H, W, 3)`` (blobs and gradients, no noise).

    Examples
    --------
    >>> test_images(2, (40, 60)).shape
    (2, 40, 60, 3)
    """
    height, width = (size, size) if isinstance(size, int) else size
    rng = _rng(seed, "images", n, height, width)
    out = np.empty((n, height, width, 3), dtype=np.uint8)
    for index in range(n):
        walk = np.cumsum(np.cumsum(rng.normal(0, 1, (height, width, 3)), 0), 1)
        lo, hi = walk.min(axis=(0, 1)), walk.max(axis=(0, 1))
        out[index] = np.round((walk - lo) / (hi - lo) * 255)
    return out


test_images.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def write_image_folder(folder: str | os.PathLike[str], images: np.ndarray,
                       names: Iterable[str] | None = None) -> list[Path]:
    """Write ``(n, H, W, 3)`` uint8 images as PNG files (lossless); needs pillow.

    ``names`` are the files' paths relative to ``folder``, without ``.png`` (default
    ``image_00000``...); names with ``/`` make sub-folders.

    Examples
    --------
    >>> import tempfile
    >>> [p.name for p in write_image_folder(tempfile.mkdtemp(), test_images(2, 16))]
    ['image_00000.png', 'image_00001.png']
    """
    from PIL import Image

    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    stems = list(names) if names is not None else [f"image_{i:05d}" for i in range(len(images))]
    paths = []
    for stem, image in zip(stems, images, strict=True):
        path = target / f"{stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def write_image_zarr(url: str | os.PathLike[str], images: np.ndarray,
                     ids: Iterable[str] | None = None, *, chunk_images: int = 8) -> str:
    """Write images as a Zarr v3 group: ``images`` (n, H, W, 3) uint8 and ``image_id``.

    This is the image-array input of ``nest-data generate``.

    Examples
    --------
    >>> import tempfile, zarr
    >>> url = write_image_zarr(tempfile.mkdtemp() + "/imgs.zarr", test_images(3, 16), "abc")
    >>> zarr.open_group(url)["images"].shape
    (3, 16, 16, 3)
    """
    import zarr

    group = zarr.open_group(os.fspath(url), mode="w", zarr_format=3)
    array = group.create_array("images", shape=images.shape, dtype="uint8",
                               chunks=(chunk_images, *images.shape[1:]),
                               dimension_names=("image", "y", "x", "rgb"))
    array[...] = images
    if ids is not None:
        values = np.asarray(list(ids), dtype=object)
        group.create_array("image_id", shape=values.shape, dtype=str,
                           dimension_names=("image",))[...] = values
    return os.fspath(url)
