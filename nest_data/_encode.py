"""Responses to new images, computed on the fly by the NEST encoders (needs torch)."""

from __future__ import annotations

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
from nest_data._images import as_images, content_hash, image_labels
from nest_data._models import EncoderSource, LoadedEncoder, torch_device
from nest_data.errors import InputError

logger = logging.getLogger("nest_data")

__all__ = ["ResponseCache", "encode", "selection_indices"]


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


def _eeg_selection(encoder: LoadedEncoder, channels: Sequence[str] | None, timepoints: Any
                   ) -> dict[str, np.ndarray]:
    """Indices for BERG's ``selection`` (channel names, a 140-long one-hot time mask)."""
    if "channel" not in encoder.dims:
        if channels is not None or timepoints is not None:
            raise InputError("channels= and timepoints= select EEG outputs; for fMRI, "
                             "choose the voxels with roi=")
        return {}
    out: dict[str, np.ndarray] = {}
    names = list(encoder.coords["channel"][1])
    if channels is not None:
        wanted = [channels] if isinstance(channels, str) else list(channels)
        unknown = [c for c in wanted if c not in names]
        if unknown or not wanted:
            raise InputError(f"unknown channel(s) {unknown or wanted}; valid: "
                             + ", ".join(map(str, names)))
        out["channel"] = np.asarray([names.index(c) for c in wanted])
    if timepoints is not None:
        out["time"] = selection_indices(timepoints, encoder.row_shape[-1], "timepoints=")
    return out


def _surface_selection(encoder: LoadedEncoder, roi: str | None, lh_vertices: Any, rh_vertices: Any
                       ) -> dict[str, np.ndarray]:
    """Global vertex indices for ``roi=`` or BERG's ``lh_vertices``/``rh_vertices``."""
    if "vertex" not in encoder.dims:
        return {}
    if roi is not None:
        if lh_vertices is not None or rh_vertices is not None:
            raise InputError("give roi= or lh_vertices=/rh_vertices=, not both (BERG uses the "
                             "vertex vectors only when no ROI is given)")
        if roi not in encoder.rois:
            raise InputError(f"ROI {roi!r} has no vertex selection in these weights (their "
                             "metadata file was missing when they were converted); ROIs "
                             f"available: {', '.join(encoder.rois) or 'none'}")
        return {"vertex": np.sort(encoder.rois[roi])}
    if lh_vertices is None and rh_vertices is None:
        return {}
    n_lh = int(encoder.attrs["n_vertices"]["lh"])
    n_rh = int(encoder.attrs["n_vertices"]["rh"])
    parts = []
    for name, value, n, offset in (("lh_vertices", lh_vertices, n_lh, 0),
                                   ("rh_vertices", rh_vertices, n_rh, n_lh)):
        if value is None:  # BERG: a hemisphere without a vector keeps all its vertices
            parts.append(np.arange(n) + offset)
            continue
        parts.append(selection_indices(value, n, f"{name}=") + offset)
    return {"vertex": np.concatenate(parts)}


def selection_indices(value: Any, n: int, what: str) -> np.ndarray:
    """Sorted indices from BERG's one-hot vector (length ``n``) or from integer indices.

    Used for ``timepoints=``, ``lh_vertices=``/``rh_vertices=`` and BERG's ROI vertex
    selections; ``what`` names the value in messages (``"timepoints="``).

    Raises
    ------
    InputError
        An empty or wrong-length vector, indices outside ``0..n-1``, or non-integers.

    Examples
    --------
    >>> selection_indices([0, 1, 1, 0], 4, "x=").tolist()  # BERG's one-hot vector
    [1, 2]
    >>> selection_indices([3, 1], 4, "x=").tolist()
    [1, 3]
    """
    values = np.asarray(value)
    if values.dtype == bool or (values.shape == (n,) and values.dtype.kind in "iu"
                                and set(np.unique(values).tolist()) <= {0, 1}):
        if values.shape != (n,) or not values.any():
            raise InputError(f"{what} as a one-hot vector needs {n} values with at least one "
                             f"1 (BERG's selection); got shape {values.shape}")
        return np.flatnonzero(values)
    if values.dtype.kind not in "iu" or values.ndim > 1:
        raise InputError(f"{what} is {values.dtype} with shape {values.shape}; give integer "
                         f"indices in 0..{n - 1} or a one-hot vector of {n} values")
    index = values.astype(np.int64).ravel()
    if index.size == 0 or index.min() < 0 or index.max() >= n:
        raise InputError(f"{what} indices must lie in 0..{n - 1}; got {index.size} values "
                         f"from {index.min(initial=0)} to {index.max(initial=0)}")
    return np.unique(index)


@_config.progress_option
def encode(
    images: Any,
    *,
    subject: int | str,
    roi: str | None = None,
    modality: str = "fmri",
    train_dataset: str | None = None,
    model: str | None = None,
    channels: Sequence[str] | None = None,
    timepoints: Any = None,
    lh_vertices: Any = None,
    rh_vertices: Any = None,
    image_ids: Sequence[str] | None = None,
    location: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    backbone: str | os.PathLike[str] | None = None,
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
        RGB images with integer values in 0..255 (uint8, or any integer dtype as NED
        took them): an array ``(B, 3, H, W)`` or ``(B, H, W, 3)``, a list of
        ``(H, W, 3)``/``(3, H, W)`` arrays, PIL images or file paths.  Non-square images are
        center-cropped to their shorter side; then the encoder's own preprocessing applies
        (fMRI: resize to 227; EEG: ImageNet's resize to 256 and center crop 224).
    subject : int or str
        Subject (1-8 for fMRI, 1-10 for EEG).
    roi : str
        fMRI ROI; ``lateral`` and ``ventral`` run both halves of NEST's split encoder.  For
        the fsaverage encoder, one of BERG's 31 surface ROIs (both hemispheres' vertices);
        omitted, the whole surface.
    modality : {"fmri", "eeg"}
        ``"eeg"`` runs the THINGS-EEG2 ViT-B/32 encoder (no ``roi``).
    train_dataset, model : str, optional
        Choose the fMRI encoder: ``train_dataset="nsd_fsaverage"`` (``model="vit_b_32"``)
        is BERG's fsaverage surface model; an ROI only the surface model has (``"V1v"``)
        picks it too.  Default: the fwRF model (``nsd``/``fwrf``).
    channels : list of str, optional
        EEG only: keep these channels (BERG's ``selection={'channels': [...]}``).
    timepoints : array, optional
        EEG only: a boolean (one-hot) mask over the 140 time points, as BERG's
        ``selection={'timepoints': ...}``, or integer indices.
    lh_vertices, rh_vertices : array, optional
        fsaverage only, without ``roi``: BERG's one-hot vectors over a hemisphere's 163,842
        vertices (or integer indices); a hemisphere without one keeps all its vertices.
    image_ids : sequence of str, optional
        Labels of the images.  Default: the file name of an image given by its path
        (``cat.jpg``; the path as given when two files share a name), else the first 16
        hexadecimal digits of the SHA-256 of its pixels; these default labels come with
        the ``image_sha256`` coordinate (the whole SHA-256 of each image's pixels).  Labels
        given here are kept as given, without it.
    location : str, optional
        Location whose root holds the converted weights (``weights/...``, see
        ``nest-data convert weights``); default lookup as in :func:`nest_data.open`.
    storage_options : dict, optional
        fsspec options, merged over the location's own.
    backbone : path or URL, optional
        EEG only: the converted ViT-B/32 weights (a folder from ``nest-data convert weights
        --vit-b-32``, or a ``.safetensors`` state_dict).  Default: ``NEST_DATA_VIT_B_32``,
        then the catalog's ``backbone_path`` under the location.
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
        ``responses``, float32, with dims ``(image, voxel)`` and the voxel labels of the
        stored entries, or ``(image, repetition, channel, time)`` with channel names, times
        and accuracy maps (never squeezed, even for one image), or ``(image, vertex)`` with
        ``hemisphere``, ``fsaverage_index`` and the per-vertex accuracies, in BERG's order
        (left hemisphere first, by index); ``image`` = the ids.

    Raises
    ------
    InputError
        Bad images, ids, selection, batch size or device; the message says what is valid.
    StoreNotFoundError
        No converted weights where the catalog says (the message says how to convert them).

    Examples
    --------
    With weights converted by ``nest-data convert weights`` under ``location``:

    >>> import numpy as np, nest_data
    >>> images = np.zeros((2, 64, 64, 3), "uint8")
    >>> nest_data.encode(images, subject=1, roi="V1", location="/nowhere")
    Traceback (most recent call last):
    ...
    nest_data.errors.StoreNotFoundError: no converted weights at /nowhere/weights/...
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be a positive number of images, got {batch_size}")
    if modality not in ("fmri", "eeg"):
        raise InputError(f"modality={modality!r}; encoders exist for 'fmri' (fwRF, with "
                         "roi=) and 'eeg' (ViT-B/32)")
    arrays = as_images(images)
    hashes = [content_hash(a) for a in arrays]
    ids = list(image_ids) if image_ids is not None else image_labels(images, hashes)
    if len(ids) != len(arrays):
        raise InputError(f"{len(ids)} image_ids for {len(arrays)} images; give one id per "
                         "image, or none for the default labels (file names, else content "
                         "hashes)")
    source = EncoderSource.resolve(subject=subject, roi=roi, modality=modality,
                                   train_dataset=train_dataset, model=model, location=location,
                                   storage_options=storage_options, backbone=backbone,
                                   catalog=catalog)
    if not source.surface and (lh_vertices is not None or rh_vertices is not None):
        raise InputError("lh_vertices= and rh_vertices= select fsaverage vertices; pass "
                         "train_dataset='nsd_fsaverage' to use the surface encoder")
    encoder = source.load()
    selection = {**_eeg_selection(encoder, channels, timepoints),
                 **_surface_selection(encoder, roi, lh_vertices, rh_vertices)}
    out = np.empty((len(arrays), *encoder.row_shape), dtype=np.float32)
    store = ResponseCache(encoder.digest) if cache else None
    todo = []
    for index, image_hash in enumerate(hashes):
        cached = store.get(image_hash) if store is not None else None
        if cached is not None and cached.shape == encoder.row_shape:
            out[index] = cached
        else:
            todo.append(index)
    target = torch_device(device)
    encoder.to(target)
    for start in tqdm(range(0, len(todo), batch_size), desc="encoding", unit="batch",
                      disable=not _config.show_progress()):
        rows = todo[start:start + batch_size]
        out[rows] = encoder([arrays[i] for i in rows], target)
        if store is not None:
            for i in rows:
                store.put(hashes[i], out[i])
    logger.info("encoded %d images with %s sub-%02d %s on %s (%d from the cache)",
                len(arrays), encoder.attrs["model"], encoder.attrs["subject"],
                encoder.attrs.get("roi", ""), target, len(arrays) - len(todo))
    da = encoder.labelled(out, ids)
    if image_ids is None:  # labels of ours: the pixels' identity goes with them
        da = da.assign_coords(image_sha256=("image", np.asarray(hashes, dtype=object), {
            "description": "SHA-256 of the image's pixels as encoded (after the center crop)"}))
    if "vertex" in encoder.dims:
        da.attrs["roi"] = roi if roi is not None else (
            "selected vertices" if selection else "whole surface")
    return da.isel(selection) if selection else da
