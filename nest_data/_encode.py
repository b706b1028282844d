"""Responses to new images, computed on the fly by the NEST encoders (needs torch)."""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from nest_data import _config
from nest_data._catalog import Catalog
from nest_data._catalog import catalog as default_catalog
from nest_data._storage import join
from nest_data.errors import NestDataError

logger = logging.getLogger("nest_data")

__all__ = ["ResponseCache", "as_images", "encode"]


def _image_error(index: int, what: str) -> NestDataError:
    return NestDataError(
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


def _content_hash(image: np.ndarray) -> str:
    """SHA-256 of an image's shape and pixels (after the center crop)."""
    return hashlib.sha256(str(image.shape).encode() + image.tobytes()).hexdigest()


class ResponseCache:
    """Computed responses on local disk, keyed by the weights' and the image's SHA-256.

    One ``.npy`` file per (encoder weights, image) under
    ``<cache dir>/responses/<weights sha256>/``; written atomically (temp file + rename), so
    concurrent processes never see a partial file.  Keys include the weights' checksum, so
    re-converted weights never reuse stale responses.
    """

    def __init__(self, weights_sha256: str, root: Path | None = None) -> None:
        base = root if root is not None else _config.cache_dir() / "responses"
        self.folder = base / weights_sha256.removeprefix("sha256:")[:32]

    def get(self, image_hash: str) -> np.ndarray | None:
        """The cached responses of one image, or None."""
        try:
            return np.load(self.folder / f"{image_hash}.npy")
        except (FileNotFoundError, ValueError, EOFError):
            return None

    def put(self, image_hash: str, values: np.ndarray) -> None:
        """Store the responses of one image."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".tmp-{uuid.uuid4().hex}.npy"
        np.save(tmp, values)
        os.replace(tmp, self.folder / f"{image_hash}.npy")


def _device(device: str) -> Any:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise NestDataError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda'") from exc


def encode(
    images: Any,
    *,
    subject: int | str,
    roi: str | None = None,
    modality: str = "fmri",
    image_ids: Sequence[str] | None = None,
    location: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    batch_size: int = 16,
    device: str = "auto",
    cache: bool = True,
    show_progress: bool | None = None,
    catalog: Catalog | None = None,
) -> xr.DataArray:
    """Responses of a NEST encoder to images, in the labelled form of a stored entry.

    Parameters
    ----------
    images : array, PIL image, path, or a list of them
        uint8 RGB images: an array ``(B, 3, H, W)`` or ``(B, H, W, 3)``, a list of
        ``(H, W, 3)``/``(3, H, W)`` arrays, PIL images or file paths.  Non-square images are
        center-cropped to their shorter side; then the encoder's own preprocessing applies.
    subject : int or str
        Subject (1-8 for fMRI).
    roi : str
        fMRI ROI; ``lateral`` and ``ventral`` run both halves of NEST's split encoder.
    modality : {"fmri"}
        Only the fMRI fwRF encoder is available so far.
    image_ids : sequence of str, optional
        Labels of the images (default: a content hash of each image's pixels).
    location : str, optional
        Location whose root holds the converted weights (``weights/...``, see
        ``nest-data convert weights``); default lookup as in :func:`nest_data.open`.
    storage_options : dict, optional
        fsspec options, merged over the location's own.
    batch_size : int
        Images per forward pass.
    device : str
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    cache : bool
        Keep computed responses in the local cache (``<cache dir>/responses``), keyed by the
        weights' and each image's SHA-256: asking again computes nothing.
    show_progress : bool, optional
        Progress bar over batches.

    Returns
    -------
    xarray.DataArray
        ``responses`` with dims ``(image, voxel)``, float32, the voxel labels of the stored
        entries (when the converted weights carry NEST's metadata) and ``image`` = the ids.
    """
    import torch

    from nest_data.encoders.fwrf import preprocess
    from nest_data.encoders.weights import load_fwrf_folder

    if modality != "fmri":
        raise NestDataError(f"modality={modality!r}: only the fMRI fwRF encoder can encode "
                            "images so far; use modality='fmri' with subject= and roi=")
    if batch_size < 1:
        raise NestDataError(f"batch_size must be a positive number of images, got {batch_size}")
    cat = catalog or default_catalog()
    spec, rel = cat.resolve_weights(modality=modality, subject=subject, roi=roi)
    root, options, _ = cat.location(location)
    model, doc, voxels = load_fwrf_folder(join(root, rel), {**options,
                                                            **(storage_options or {})})
    arrays = as_images(images)
    hashes = [_content_hash(a) for a in arrays]
    ids = list(image_ids) if image_ids is not None else [h[:16] for h in hashes]
    if len(ids) != len(arrays):
        raise NestDataError(f"{len(ids)} image_ids for {len(arrays)} images; give one id per "
                            "image, or none to use content hashes")
    out = np.empty((len(arrays), model.n_voxels), dtype=np.float32)
    store = ResponseCache(doc["weights_sha256"]) if cache else None
    todo = []
    for index, image_hash in enumerate(hashes):
        cached = store.get(image_hash) if store is not None else None
        if cached is not None and cached.shape == (model.n_voxels,):
            out[index] = cached
        else:
            todo.append(index)
    target = _device(device)
    model = model.to(target)
    with torch.inference_mode():
        for start in tqdm(range(0, len(todo), batch_size), desc="encoding", unit="batch",
                          disable=not _config.show_progress(show_progress)):
            rows = todo[start:start + batch_size]
            batch = torch.cat([preprocess(torch.from_numpy(arrays[i])[None].to(target))
                               for i in rows])
            out[rows] = model(batch).float().cpu().numpy()
            if store is not None:
                for i in rows:
                    store.put(hashes[i], out[i])
    coords: dict[str, Any] = {"image": ("image", np.asarray(ids, dtype=object))}
    coords.update({name: ("voxel", values) for name, values in voxels.items()})
    attrs = {"modality": spec.modality, "train_dataset": spec.train_dataset,
             "model": spec.model, "subject": doc["subject"], "roi": doc["roi"],
             "units": spec.units, **doc.get("voxel_attrs", {}),
             "source": "computed by nest-data's fwRF encoder (plain torch) from converted "
                       "NEST weights", "weights_sha256": doc["weights_sha256"]}
    logger.info("encoded %d images for sub-%02d %s on %s (%d from the cache)", len(arrays),
                doc["subject"], doc["roi"], target, len(arrays) - len(todo))
    return xr.DataArray(out, dims=("image", "voxel"), coords=coords, attrs=attrs,
                        name="responses")

