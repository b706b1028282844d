"""ROI means per image, for one entry or for subjects x ROIs of different sizes."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import dask
import dask.array
import numpy as np
import xarray as xr

from nest_data._dask import stored_reader, weighted_sum_grid, weighted_sums
from nest_data._format import DATA_VAR
from nest_data.errors import InputError

logger = logging.getLogger("nest_data")

__all__ = ["roi_mean", "roi_means"]

#: Entries for the functions that take several: a DataTree from :func:`nest_data.open_many`,
#: a mapping of DataArrays, or a sequence of DataArrays.
Entries = xr.DataTree | Mapping[Hashable, xr.DataArray] | Sequence[xr.DataArray]


#: The dims over which fMRI entries hold their units: voxels (fwRF) or surface vertices.
SPACE_DIMS = ("voxel", "vertex")


#: Plurals of the units an analysis counts (``"vertex"`` is not ``"vertexs"``).
PLURALS = {"voxel": "voxels", "vertex": "vertices", "channel": "channels", "image": "images",
           "time": "time points"}


def counted(n: int, unit: str) -> str:
    """``n`` and ``unit``, in the plural unless ``n`` is 1.

    Examples
    --------
    >>> counted(1040, "vertex"), counted(1, "voxel"), counted(2, "voxel")
    ('1040 vertices', '1 voxel', '2 voxels')
    """
    return f"{n} {unit if n == 1 else PLURALS.get(unit, unit + 's')}"


def _space(da: Any) -> str | None:
    """``"voxel"`` or ``"vertex"`` when ``da`` is an fMRI entry, else None."""
    if not isinstance(da, xr.DataArray):
        return None
    return next((d for d in SPACE_DIMS if d in da.dims), None)


def _cells(das: list[xr.DataArray], what: str) -> dict[tuple[int, str], xr.DataArray]:
    """fMRI entries by ``(subject, roi)``, each given once."""
    cells: dict[tuple[int, str], xr.DataArray] = {}
    for da in das:
        _require_fmri(da, what)
        if "subject" not in da.attrs or not da.attrs.get("roi"):
            raise InputError(f"{what} needs the 'subject' and 'roi' attributes that "
                             f"nest_data.open sets; {_label(da)} has attrs "
                             f"{sorted(da.attrs)}. Open entries with nest_data.open.")
        key = (int(da.attrs["subject"]), str(da.attrs["roi"]))
        if key in cells:
            raise InputError(f"sub-{key[0]:02d} {key[1]} is given twice; pass each "
                             "subject and ROI once")
        cells[key] = da
    return cells


def _require_fmri(da: xr.DataArray, what: str) -> str:
    space = _space(da)
    if space is None:
        raise InputError(f"{what} needs an fMRI entry with a 'voxel' or 'vertex' dimension; "
                         f"got dims {da.dims}. Open one with nest_data.open(..., roi='V1').")
    return space


def _keep(da: xr.DataArray, min_ncsnr: float | None) -> np.ndarray:
    """Boolean mask of the voxels with ``ncsnr > min_ncsnr`` (all of them if None)."""
    if min_ncsnr is None:
        return np.ones(da.sizes[_require_fmri(da, "min_ncsnr")], dtype=bool)
    if "ncsnr" not in da.coords:
        raise InputError("min_ncsnr= needs the 'ncsnr' voxel coordinate, which this "
                         f"entry ({_label(da)}) lacks; pass min_ncsnr=None to use every "
                         "voxel")
    keep = np.asarray(da["ncsnr"].values > min_ncsnr)
    if not keep.any():
        raise InputError(f"no voxel has ncsnr > {min_ncsnr} in {_label(da)} (its max is "
                         f"{float(da['ncsnr'].max()):.3f}); lower min_ncsnr or pass "
                         "min_ncsnr=None")
    return keep


def _reliable(da: xr.DataArray, min_ncsnr: float | None) -> xr.DataArray:
    """``da`` restricted to the voxels with ``ncsnr > min_ncsnr`` (all if None)."""
    keep = _keep(da, min_ncsnr)
    return da if keep.all() else da.isel({_require_fmri(da, "min_ncsnr"): np.flatnonzero(keep)})


def _label(da: xr.DataArray) -> str:
    a = da.attrs
    if "subject" in a:
        return (f"{a.get('imageset', '?')} sub-{int(a['subject']):02d}"
                + (f" {a['roi']}" if a.get("roi") else ""))
    return str(da.name)


def roi_mean(da: xr.DataArray, *, min_ncsnr: float | None = None) -> xr.DataArray:
    """Mean response over an ROI's voxels for every image (lazy).

    Parameters
    ----------
    da : xarray.DataArray
        An fMRI entry from :func:`nest_data.open`.
    min_ncsnr : float, optional
        Keep only voxels with ``ncsnr > min_ncsnr`` (RNC uses 0.5).

    Returns
    -------
    xarray.DataArray
        Dims ``(image,)``, float64, with the image coordinates of ``da``; dask-backed.
        NaN responses are skipped (as ``numpy.nanmean`` does) in entries that hold any;
        entries that record none (``nan_count == 0``, every converted store) are reduced
        as one weighted sum per image, without copying the selected voxels.

    Examples
    --------
    >>> import nest_data
    >>> da = nest_data.open(imageset="things", subject=1, roi="V1", location="demo")
    >>> nest_data.roi_mean(da, min_ncsnr=0.5).dims
    ('image',)
    """
    space = _require_fmri(da, "roi_mean")
    keep = _keep(da, min_ncsnr)
    n = int(keep.sum())
    if _fusable(da, space):
        # The stored values, with no NaN: every task decodes its images one inner chunk at
        # a time into a reused buffer and reduces them there (float32 BLAS, float64 result).
        out = xr.DataArray(weighted_sums(da.data, keep / n), dims=da.dims[:1],
                           coords={k: v for k, v in da.coords.variables.items()
                                   if space not in v.dims})
    else:
        out = _unfused_mean(da, space, keep)
    out.attrs = {**{k: v for k, v in da.attrs.items() if k not in ("sha256", "nan_count")},
                 "analysis": f"mean over {counted(n, space)}"
                 + (f" with ncsnr > {min_ncsnr}" if min_ncsnr is not None else "")}
    return out.rename("roi_mean")


def _fusable(da: xr.DataArray, space: str) -> bool:
    """Whether ``da`` is the stored values of a store without NaN, ``(image, space)``: its
    mean is then read as weighted sums fused with the reads (:mod:`nest_data._dask`)."""
    return (da.attrs.get("nan_count", 1) == 0 and da.dims == (da.dims[0], space)
            and stored_reader(da.data) is not None)


def _unfused_mean(da: xr.DataArray, space: str, keep: np.ndarray) -> xr.DataArray:
    """The mean over the kept voxels through xarray: one weighted sum per image when the
    store records no NaN (reads each chunk once, copies nothing, float64), else NaN-aware."""
    if da.attrs.get("nan_count", 1) == 0:
        return xr.dot(da, xr.DataArray(keep / keep.sum(), dims=space), dim=space)
    kept = da if keep.all() else da.isel({space: np.flatnonzero(keep)})
    return kept.astype(np.float64).mean(space, skipna=True)


def _entry_list(entries: Entries | xr.DataArray, what: str) -> list[xr.DataArray]:
    """The DataArrays of a DataTree, a mapping or a sequence (or one DataArray)."""
    out: list[Any]
    if isinstance(entries, xr.DataArray):
        out = [entries]
    elif isinstance(entries, xr.DataTree):
        out = [node[DATA_VAR] for node in entries.subtree if DATA_VAR in node.data_vars]
    elif isinstance(entries, Mapping):
        out = list(entries.values())
    elif isinstance(entries, Iterable) and not isinstance(entries, (str, bytes)):
        out = list(entries)
    else:
        raise InputError(f"{what} takes entries as an xarray.DataTree from "
                         "nest_data.open_many, a dict or a list of DataArrays from "
                         f"nest_data.open; got {type(entries).__name__}")
    bad = [type(x).__name__ for x in out if not isinstance(x, xr.DataArray)]
    if bad or not out:
        raise InputError(f"{what} needs at least one fMRI entry (DataArray); got "
                         f"{len(out)} item(s){', of types ' + ', '.join(bad) if bad else ''}"
                         ". Pass nest_data.open_many(imageset=..., subject=[...], "
                         "roi=[...]).")
    return out


def _shared_image_coords(das: Sequence[xr.DataArray], what: str) -> dict[str, Any]:
    """Image coordinates equal in every entry (``split`` of nsd differs by subject)."""
    first = das[0]
    for da in das[1:]:
        if (da.sizes.get("image") != first.sizes.get("image")
                or da.attrs.get("imageset") != first.attrs.get("imageset")
                or ("image" in da.coords and "image" in first.coords
                    and not np.array_equal(da.coords.variables["image"].values,
                                           first.coords.variables["image"].values))):
            raise InputError(
                f"{what} needs entries of the same images; {_label(first)} has "
                f"{first.sizes.get('image')} images and {_label(da)} has "
                f"{da.sizes.get('image')}. Open every entry with the same imageset= (and the "
                "same image selection).")
    # coordinate Variables, not DataArrays: xarray builds a DataArray per coordinate read
    shared: dict[str, Any] = {}
    for name, var in first.coords.variables.items():
        if var.dims != ("image",):
            continue
        if all(name in da.coords and np.array_equal(da.coords.variables[name].values,
                                                    var.values) for da in das[1:]):
            shared[str(name)] = var
    return shared


def roi_means(entries: Entries, *, min_ncsnr: float | None = None) -> xr.DataArray:
    """ROI mean per image of every subject and ROI, stacked (lazy).

    Each entry is averaged over its own (reliable) voxels first, so entries whose voxel
    counts differ (every subject has its own) stack into one array;
    ``roi_means(...).mean("subject")`` is then the cross-subject average RNC uses (mean over
    subjects of the mean over each subject's voxels).

    Parameters
    ----------
    entries : xarray.DataTree, dict or list of xarray.DataArray
        fMRI entries of the same images, e.g. from :func:`nest_data.open_many`.
    min_ncsnr : float, optional
        Keep only voxels with ``ncsnr > min_ncsnr`` in every entry.

    Returns
    -------
    xarray.DataArray
        ``roi_mean``, dims ``(subject, roi, image)``, dask-backed, with the image
        coordinates that are equal in every entry (nsd's per-subject ``split`` is dropped)
        and ``n_voxels`` (subject, roi): how many voxels each mean is over.

    Raises
    ------
    InputError
        Entries of different images, a (subject, ROI) pair given twice or missing from the
        grid, or an entry without the ``subject``/``roi`` attributes.

    Examples
    --------
    >>> import nest_data
    >>> tree = nest_data.open_many(imageset="nsd", subject=[1, 2], roi=["V1", "FFA-1"],
    ...                            location="demo")
    >>> means = nest_data.roi_means(tree, min_ncsnr=0.5)
    >>> means.sizes
    Frozen({'subject': 2, 'roi': 2, 'image': 24})
    >>> means.mean("subject").dims
    ('roi', 'image')
    """
    das = _entry_list(entries, "roi_means")
    image_coords = _shared_image_coords(das, "roi_means")
    cells = _cells(das, "roi_means")
    subjects = sorted({s for s, _ in cells})
    rois = list(dict.fromkeys(r for _, r in cells))
    missing = [f"sub-{s:02d} {r}" for s in subjects for r in rois if (s, r) not in cells]
    if missing:
        raise InputError(f"roi_means needs every ROI for every subject; missing: "
                         f"{', '.join(missing)}. Open them too, or compute roi_mean per "
                         "entry.")
    # Every entry's means (8 bytes per image) in one graph layer, small local entries several
    # to a task: entries are chunked differently (by their voxel counts), and a dask array
    # per entry, stacked, made the graph of hundreds of entries slow to build and schedule.
    grid: dict[tuple[int, int], Any] = {}
    counts = np.zeros((len(subjects), len(rois)), dtype=np.int64)
    for (s, r), da in cells.items():
        i, j = subjects.index(s), rois.index(r)
        space = _require_fmri(da, "roi_means")
        keep = _keep(da, min_ncsnr)
        counts[i, j] = int(keep.sum())
        grid[i, j] = ((da.data, keep / counts[i, j]) if _fusable(da, space)
                      else _as_dask(_unfused_mean(da, space, keep)))
    data = weighted_sum_grid(grid, (len(subjects), len(rois)), das[0].sizes["image"])
    first = das[0].attrs
    attrs = {k: first[k] for k in ("modality", "train_dataset", "model", "imageset", "units")
             if k in first}
    spaces = sorted({_require_fmri(da, "roi_means") for da in das})
    attrs["analysis"] = (f"mean over each entry's {' or '.join(PLURALS[s] for s in spaces)}"
                         + (f" with ncsnr > {min_ncsnr}" if min_ncsnr is not None else ""))
    if min_ncsnr is not None:
        attrs["min_ncsnr"] = min_ncsnr
    return xr.DataArray(
        data, dims=("subject", "roi", "image"), name="roi_mean", attrs=attrs,
        coords={"subject": subjects, "roi": rois, **image_coords,
                "n_voxels": (("subject", "roi"), counts)})


def _as_dask(da: xr.DataArray) -> dask.array.Array:
    data = da.data
    return data if isinstance(data, dask.array.Array) else dask.array.from_array(data)
