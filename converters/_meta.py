"""Reading the metadata blocks of NED/NEST files, and the voxel labels they give."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nest_data.errors import SourceFormatError

__all__ = ["eeg_labels", "fmri_voxel_labels", "meta_block", "meta_field", "meta_index",
           "meta_lookup", "table_values"]

_SHOWN = 5  # offending keys or rows quoted in an error message


def meta_block(meta: Mapping[str, Any], name: str, path: Path) -> Mapping[str, Any]:
    """The dict ``meta[name]``, or a :class:`SourceFormatError` naming the file."""
    value = meta.get(name)
    if not isinstance(value, Mapping):
        raise SourceFormatError(f"{path}: metadata has no {name!r} block (found "
                                f"{sorted(meta)}); is it the metadata of this .h5 file?")
    return value


def table_values(value: Any, path: Path, field: str) -> np.ndarray:
    """A metadata field as an array, whether NED stored it as a dict, a list or an array.

    NED's creation scripts stored some label fields as plain dicts whose keys are the row
    numbers (``things_labels.image_paths = {0: 'aardvark/aardvark_01b.jpg', ...}``); others
    are lists or arrays.  A dict must have exactly the keys ``0..n-1``; its values are
    returned in key order.

    Parameters
    ----------
    value : dict, list or array
        The field as read from the metadata.
    path : Path
        The file it comes from (for error messages).
    field : str
        Its name, ``block.field`` (for error messages).

    Returns
    -------
    numpy.ndarray

    Raises
    ------
    SourceFormatError
        A dict's keys are not exactly ``0..n-1``.

    Examples
    --------
    >>> from pathlib import Path
    >>> table_values({1: "b", 0: "a"}, Path("m.npy"), "labels.names").tolist()
    ['a', 'b']
    >>> table_values({0: "a", 2: "c"}, Path("m.npy"), "labels.names")
    Traceback (most recent call last):
    ...
    nest_data.errors.SourceFormatError: m.npy: labels.names is a dict of 2 entries whose ...
    """
    if not isinstance(value, Mapping):
        return np.asarray(value)
    n = len(value)
    rows = {int(k) for k in value if _is_int(k) and 0 <= k < n}
    missing = sorted(set(range(n)) - rows)
    unexpected = (sorted(int(k) for k in value if _is_int(k) and not 0 <= k < n)
                  + sorted((k for k in value if not _is_int(k)), key=repr))
    if unexpected:  # as many as are missing: n keys for n row numbers
        raise SourceFormatError(
            f"{path}: {field} is a dict of {n} entries whose keys must be the row numbers "
            f"0..{n - 1} (NED keys such tables by row), but it lacks the keys {_few(missing)} "
            f"and has the keys {_few(unexpected)} instead. Re-download the file, or rewrite "
            f"{field} with the keys 0..{n - 1}.")
    return np.asarray([value[i] for i in range(n)])


def meta_field(block: Mapping[str, Any], name: str, path: Path, length: int | None = None,
               block_name: str = "") -> np.ndarray:
    """Field ``name`` of a metadata block as an array (see :func:`table_values`).

    Parameters
    ----------
    block : dict
        The metadata block.
    name : str
        The field.
    path : Path
        The file the block comes from (for error messages).
    length : int, optional
        The number of values the field must have along its first axis.
    block_name : str
        The block's name in the file (for error messages).

    Returns
    -------
    numpy.ndarray

    Raises
    ------
    SourceFormatError
        The field is missing, has the wrong length, or is a dict not keyed ``0..n-1``.
    """
    if name not in block:
        raise SourceFormatError(f"{path}: metadata block {block_name!r} lacks {name!r} (found "
                                f"{sorted(block)})")
    values = table_values(block[name], path, f"{block_name}.{name}")
    if length is not None and values.shape[:1] != (length,):
        raise SourceFormatError(f"{path}: {block_name}.{name} has shape {values.shape}, "
                                f"expected {length} values to match the responses")
    return values


def meta_index(block: Mapping[str, Any], name: str, path: Path, length: int | None = None,
               block_name: str = "") -> np.ndarray:
    """Field ``name`` of a block as int64 indices (integers, or whole numbers stored as floats).

    MATLAB files read with ``scipy.io.loadmat`` may hold indices as doubles; any value that
    is not a whole number is an error rather than being truncated.  Parameters as
    :func:`meta_field`.

    Returns
    -------
    numpy.ndarray
        int64 values.

    Raises
    ------
    SourceFormatError
        As :func:`meta_field`, or a value is not a whole number.
    """
    values = meta_field(block, name, path, length, block_name)
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    if values.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)))
        if not bad.size:
            return values.astype(np.int64)
        where = tuple(int(i) for i in np.unravel_index(int(bad[0]), values.shape))
        at = f"row {where[0]}" if values.ndim == 1 else f"position {where}"
        found = f"{values[where].item()!r} at {at}"
    else:
        found = f"{values.dtype} values"
    raise SourceFormatError(f"{path}: {block_name}.{name} must hold integer indices, but it "
                            f"has {found}; the file is damaged or not NED's: re-download it.")


def meta_lookup(table: np.ndarray, index: np.ndarray, path: Path, table_field: str,
                index_field: str) -> np.ndarray:
    """``table[index]``: a per-row label read from a lookup table, with the indices checked.

    Out-of-range indices (negative ones included, which NumPy would silently wrap) are a
    :class:`SourceFormatError` naming the file, both fields and the first bad index.

    Parameters
    ----------
    table : numpy.ndarray
        One entry per concept, class... (e.g. THINGS' ``unique_id``).
    index : numpy.ndarray
        int indices into ``table``, one per row (e.g. ``image_concept_index``).
    path : Path
        The file both come from (for error messages).
    table_field, index_field : str
        Their names, ``block.field`` (for error messages).

    Returns
    -------
    numpy.ndarray
        ``table[index]``.

    Examples
    --------
    >>> from pathlib import Path
    >>> import numpy as np
    >>> meta_lookup(np.array(["cat", "dog"]), np.array([1, 1, 0]), Path("m.npy"), "t.names",
    ...             "t.index").tolist()
    ['dog', 'dog', 'cat']
    """
    n = len(table)
    bad = np.flatnonzero((index < 0) | (index >= n))
    if bad.size:
        row = int(bad[0])
        others = bad.size - 1
        more = (f" (and {others} more {'row' if others == 1 else 'rows'} out of range)"
                if others else "")
        valid = f"valid indices are 0..{n - 1}" if n else "no index is valid"
        raise SourceFormatError(
            f"{path}: {index_field} is {int(index[row])} at row {row}{more}, but {table_field} "
            f"has {n} entries, so {valid}. The two fields do not belong together: re-download "
            "the file.")
    return table[index]


def _is_int(key: Any) -> bool:
    return isinstance(key, (int, np.integer)) and not isinstance(key, bool)


def _few(values: list[Any]) -> str:
    """``values`` for an error message: the first few, and how many there are in all."""
    shown = ", ".join(repr(v) for v in values[:_SHOWN])
    return f"[{shown}]" if len(values) <= _SHOWN else f"[{shown}, ...] ({len(values)} in all)"


def fmri_voxel_labels(
    fmri: Mapping[str, Any], accuracy: Mapping[str, Any], path: Path, *, source_prefix: str,
    block_name: str = "fmri", require_affine: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Voxel coordinates and volume attributes from an ``fmri`` block and accuracy fields.

    Voxel order is that of the True cells of ``roi_mask_volume`` in C order (NED's and
    NEST's order); ``x, y, z`` come from ``fmri_affine``.  NED's
    ``noise_normalized_encoding`` becomes ``explained_variance`` (BERG's name for it).

    Parameters
    ----------
    fmri : dict
        ``ncsnr``, ``roi_mask_volume`` and ``fmri_affine`` (an ``fmri`` metadata block, or
        the ``betas_info`` of a fwRF weights file, which holds the same fields).
    accuracy : dict
        ``r2``, ``noise_ceiling`` and ``explained_variance`` or
        ``noise_normalized_encoding``, those present (may be empty).
    path : Path
        The file the fields come from (for error messages).
    source_prefix : str
        Where ``accuracy`` sits in that file, recorded as each coordinate's ``source_field``.
    block_name : str
        Where ``fmri`` sits in that file (for error messages).
    require_affine : bool
        If False, a block without ``fmri_affine`` gives no ``x, y, z`` and no ``affine``.

    Returns
    -------
    coords : dict
        Name -> ``(dims, values, attrs)`` for ``voxel, i, j, k, x, y, z, ncsnr`` and the
        accuracy fields present.
    attrs : dict
        ``affine``, ``volume_shape`` and ``space``.
    """
    mask = meta_field(fmri, "roi_mask_volume", path, block_name=block_name).astype(bool)
    if mask.ndim != 3:
        raise SourceFormatError(f"{path}: {block_name}.roi_mask_volume has shape {mask.shape}; "
                                "expected a 3-D volume")
    n_voxels = int(mask.sum())
    ijk = np.argwhere(mask)
    coords: dict[str, Any] = {
        "voxel": (("voxel",), np.arange(n_voxels, dtype=np.int64),
                  {"description": "voxel index within the ROI (NED's order)"})}
    for axis, name in enumerate("ijk"):
        coords[name] = (("voxel",), ijk[:, axis].astype(np.int32),
                        {"description": f"voxel index along volume axis {axis}"})
    attrs: dict[str, Any] = {}
    if require_affine or "fmri_affine" in fmri:
        affine = meta_field(fmri, "fmri_affine", path, block_name=block_name).astype(np.float64)
        if affine.shape != (4, 4):
            raise SourceFormatError(f"{path}: {block_name}.fmri_affine has shape "
                                    f"{affine.shape}; expected a 4 x 4 affine matrix")
        xyz = (np.c_[ijk, np.ones(n_voxels)] @ affine.T)[:, :3]
        for axis, name in enumerate("xyz"):
            coords[name] = (("voxel",), xyz[:, axis].astype(np.float32),
                            {"units": "mm", "description": "world coordinate from fmri_affine"})
        attrs["affine"] = affine.tolist()
    attrs["volume_shape"] = list(mask.shape)
    attrs["space"] = "subject-native NSD functional space (1.8 mm)" + (
        "; affine maps i,j,k to mm" if "affine" in attrs else "; the source has no affine")
    coords["ncsnr"] = (("voxel",), meta_field(fmri, "ncsnr", path, n_voxels, block_name),
                       {"description": "noise ceiling signal-to-noise ratio of the voxel"})
    names = {"r2": "r2", "noise_ceiling": "noise_ceiling",
             "explained_variance": ("explained_variance" if "explained_variance" in accuracy
                                    else "noise_normalized_encoding")}
    for coord, source_name in names.items():
        if source_name in accuracy:
            coords[coord] = (("voxel",), meta_field(accuracy, source_name, path, n_voxels,
                                                    source_prefix),
                             {"source_field": f"{source_prefix}.{source_name}"})
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
