"""Reading the metadata blocks of NED/NEST files, and the voxel labels they give."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nest_data.errors import SourceFormatError

__all__ = ["eeg_labels", "fmri_voxel_labels", "meta_block", "meta_field"]


def meta_block(meta: Mapping[str, Any], name: str, path: Path) -> Mapping[str, Any]:
    value = meta.get(name)
    if not isinstance(value, Mapping):
        raise SourceFormatError(f"{path}: metadata has no {name!r} block (found "
                                f"{sorted(meta)}); is it the metadata of this .h5 file?")
    return value


def meta_field(block: Mapping[str, Any], name: str, path: Path, length: int | None = None,
           block_name: str = "") -> np.ndarray:
    if name not in block:
        raise SourceFormatError(f"{path}: metadata block {block_name!r} lacks {name!r} (found "
                                f"{sorted(block)})")
    values = np.asarray(block[name])
    if length is not None and values.shape[:1] != (length,):
        raise SourceFormatError(f"{path}: {block_name}.{name} has shape {values.shape}, "
                                f"expected {length} values to match the responses")
    return values


def fmri_voxel_labels(
    fmri: Mapping[str, Any], accuracy: Mapping[str, Any], path: Path, *, source_prefix: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Voxel coordinates and volume attributes from an ``fmri`` block and accuracy fields.

    Voxel order is that of the True cells of ``roi_mask_volume`` in C order (NED's and
    NEST's order); ``x, y, z`` come from ``fmri_affine``.  NED's
    ``noise_normalized_encoding`` becomes ``explained_variance`` (BERG's name for it).

    Returns
    -------
    coords : dict
        Name -> ``(dims, values, attrs)`` for ``voxel, i, j, k, x, y, z, ncsnr`` and the
        accuracy fields present.
    attrs : dict
        ``affine``, ``volume_shape`` and ``space``.
    """
    mask = meta_field(fmri, "roi_mask_volume", path, block_name="fmri").astype(bool)
    if mask.ndim != 3:
        raise SourceFormatError(f"{path}: roi_mask_volume has shape {mask.shape}; expected a "
                                "3-D volume")
    n_voxels = int(mask.sum())
    affine = meta_field(fmri, "fmri_affine", path, block_name="fmri").astype(np.float64)
    ijk = np.argwhere(mask)
    xyz = (np.c_[ijk, np.ones(n_voxels)] @ affine.T)[:, :3]
    coords: dict[str, Any] = {
        "voxel": (("voxel",), np.arange(n_voxels, dtype=np.int64),
                  {"description": "voxel index within the ROI (NED's order)"})}
    for axis, name in enumerate("ijk"):
        coords[name] = (("voxel",), ijk[:, axis].astype(np.int32),
                        {"description": f"voxel index along volume axis {axis}"})
    for axis, name in enumerate("xyz"):
        coords[name] = (("voxel",), xyz[:, axis].astype(np.float32),
                        {"units": "mm", "description": "world coordinate from fmri_affine"})
    coords["ncsnr"] = (("voxel",), meta_field(fmri, "ncsnr", path, n_voxels, "fmri"),
                       {"description": "noise ceiling signal-to-noise ratio of the voxel"})
    names = {"r2": "r2", "noise_ceiling": "noise_ceiling",
             "explained_variance": ("explained_variance" if "explained_variance" in accuracy
                                    else "noise_normalized_encoding")}
    for coord, source_name in names.items():
        if source_name in accuracy:
            coords[coord] = (("voxel",), meta_field(accuracy, source_name, path, n_voxels,
                                               source_prefix),
                             {"source_field": f"{source_prefix}.{source_name}"})
    attrs = {"affine": affine.tolist(), "volume_shape": list(mask.shape),
             "space": "subject-native NSD functional space (1.8 mm); affine maps i,j,k to mm"}
    return coords, attrs


def eeg_labels(eeg: Mapping[str, Any], accuracy: Mapping[str, Any], path: Path, *,
               shape: tuple[int, int, int] = (4, 63, 140)) -> dict[str, Any]:
    """Repetition, channel and time coordinates, and the accuracy maps, of an EEG encoder.

    Parameters
    ----------
    eeg : dict
        The ``eeg`` block (``ch_names``, ``times``).
    accuracy : dict
        Accuracy maps, each ``(channel, time)`` or ``(repetition, channel, time)``.
    shape : tuple
        ``(repetitions, channels, times)`` of the responses.

    Returns
    -------
    dict
        Name -> ``(dims, values, attrs)``.
    """
    n_rep, n_ch, n_t = shape
    ch_names = meta_field(eeg, "ch_names", path, n_ch, "eeg").astype(str)
    times = meta_field(eeg, "times", path, n_t, "eeg").astype(np.float64)
    coords: dict[str, Any] = {
        "repetition": (("repetition",), np.arange(1, n_rep + 1, dtype=np.int64),
                       {"description": "THINGS-EEG2 training repetition of the encoder"}),
        "channel": (("channel",), ch_names, {"description": "EEG channel (10-10 name)"}),
        "time": (("time",), times, {"units": "s", "description": "time from image onset"}),
    }
    for name, values in accuracy.items():
        values = np.asarray(values)
        if values.shape == (n_ch, n_t):
            coords[name] = (("channel", "time"), values, {})
        elif values.shape == (n_rep, n_ch, n_t):
            coords[name] = (("repetition", "channel", "time"), values, {})
        else:
            raise SourceFormatError(f"{path}: accuracy map {name!r} has shape {values.shape}; "
                                    f"expected ({n_ch}, {n_t}) or ({n_rep}, {n_ch}, {n_t})")
    return coords
