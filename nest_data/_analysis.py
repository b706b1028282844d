"""Analyses on opened entries, lazy and ready for ``dask.distributed``.

Every function takes entries from :func:`nest_data.open` / :func:`nest_data.open_many` and
returns labelled xarray objects:

- :func:`roi_mean` and :func:`roi_means`: ROI mean per image (reliable voxels by ``ncsnr``),
  for one entry or for subjects x ROIs whose voxel counts differ;
- :func:`top_images`: the images that drive an ROI (or a subject-averaged ROI) most or least;
- :func:`univariate_rnc`: univariate relational neural control for a pair of ROIs;
- :func:`rsm`, :func:`rsa` and :func:`rsa_matrix`: representational similarity of an image
  subset computed on the fly from the responses, and its comparison between entries.

Functions that return values of the responses return them dask-backed: nothing is read
until you compute, and then it runs on whatever dask scheduler is active (a
``distributed.Client`` included), a stored chunk at a time.  :func:`top_images` and
:func:`univariate_rnc` must see the scores to pick images: they compute the ROI means (the
only pass over the responses, with a progress bar) and work on those few numbers.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, cast

import dask
import dask.array
import numpy as np
import xarray as xr
from dask.array.core import PerformanceWarning

from nest_data._progress import compute
from nest_data._reader import take_images, weighted_sums
from nest_data._store import DATA_VAR
from nest_data.errors import InputError

logger = logging.getLogger("nest_data")

__all__ = ["roi_mean", "roi_means", "rsa", "rsa_matrix", "rsm", "top_images",
           "univariate_rnc"]

#: Entries for the functions that take several: a DataTree from :func:`nest_data.open_many`,
#: a mapping of DataArrays, or a sequence of DataArrays.
Entries = xr.DataTree | Mapping[Hashable, xr.DataArray] | Sequence[xr.DataArray]

#: Control conditions of univariate RNC: (name, control, sign for ROI 1, sign for ROI 2).
RNC_CONDITIONS = (("up_up", "align", 1, 1), ("down_down", "align", -1, -1),
                  ("up_down", "disentangle", 1, -1), ("down_up", "disentangle", -1, 1))

_RSM_BLOCK_BYTES = 64 * 2**20  # rows of the z-scored subset per dask chunk (float64)
_BATCH_BLOCK = 65536  # random batches drawn at a time (bounded memory for 10^6 batches)
_LARGE_RSM_IMAGES = 20000  # above this many images an RSM is more than 3 GB


# ------------------------------------------------------------------------- ROI means


#: The dims over which fMRI entries hold their units: voxels (fwRF) or surface vertices.
SPACE_DIMS = ("voxel", "vertex")


def _space(da: Any) -> str | None:
    """``"voxel"`` or ``"vertex"`` when ``da`` is an fMRI entry, else None."""
    if not isinstance(da, xr.DataArray):
        return None
    return next((d for d in SPACE_DIMS if d in da.dims), None)


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
    fused = (weighted_sums(da.data, keep / n) if da.attrs.get("nan_count", 1) == 0
             and da.dims == (da.dims[0], space) else None)
    if fused is not None:
        # The stored values, with no NaN: every task decodes its images one inner chunk at
        # a time into a reused buffer and reduces them there (float32 BLAS, float64 result).
        out = xr.DataArray(fused, dims=da.dims[:1],
                           coords={k: v for k, v in da.coords.items() if space not in v.dims})
    elif da.attrs.get("nan_count", 1) == 0:
        # The store records that it holds no NaN: one weighted sum per image reads each
        # chunk once, copies nothing and accumulates in float64.
        weights = xr.DataArray(keep / n, dims=space)
        out = xr.dot(da, weights, dim=space)
    else:
        out = _reliable(da, min_ncsnr).astype(np.float64).mean(space, skipna=True)
    out.attrs = {**{k: v for k, v in da.attrs.items() if k not in ("sha256", "nan_count")},
                 "analysis": f"mean over {n} {space}s"
                 + (f" with ncsnr > {min_ncsnr}" if min_ncsnr is not None else "")}
    return out.rename("roi_mean")


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
                    and not np.array_equal(da["image"].values, first["image"].values))):
            raise InputError(
                f"{what} needs entries of the same images; {_label(first)} has "
                f"{first.sizes.get('image')} images and {_label(da)} has "
                f"{da.sizes.get('image')}. Open every entry with the same imageset= (and the "
                "same image selection).")
    shared: dict[str, Any] = {}
    for name, coord in first.coords.items():
        if coord.dims != ("image",):
            continue
        values = coord.values
        if all(name in da.coords and np.array_equal(da[name].values, values) for da in das):
            shared[str(name)] = ("image", values, coord.attrs)
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
    cells: dict[tuple[int, str], xr.DataArray] = {}
    counts: dict[tuple[int, str], int] = {}
    for da in das:
        _require_fmri(da, "roi_means")
        if "subject" not in da.attrs or not da.attrs.get("roi"):
            raise InputError(f"roi_means needs the 'subject' and 'roi' attributes that "
                             f"nest_data.open sets; {_label(da)} has attrs "
                             f"{sorted(da.attrs)}. Open entries with nest_data.open.")
        key = (int(da.attrs["subject"]), str(da.attrs["roi"]))
        if key in cells:
            raise InputError(f"sub-{key[0]:02d} {key[1]} is given twice; pass each "
                             "subject and ROI once")
        cells[key] = roi_mean(da, min_ncsnr=min_ncsnr)
        counts[key] = int(_keep(da, min_ncsnr).sum())
    subjects = sorted({s for s, _ in cells})
    rois = list(dict.fromkeys(r for _, r in cells))
    missing = [f"sub-{s:02d} {r}" for s in subjects for r in rois if (s, r) not in cells]
    if missing:
        raise InputError(f"roi_means needs every ROI for every subject; missing: "
                         f"{', '.join(missing)}. Open them too, or compute roi_mean per "
                         "entry.")
    # One chunk per entry's means (8 bytes per image): entries are chunked differently
    # (by their voxel counts), and stacking them as they are would cut every entry at
    # every other entry's chunk boundaries.
    data = dask.array.stack([dask.array.stack([_as_dask(cells[s, r]).rechunk(-1)
                                               for r in rois]) for s in subjects])
    first = das[0].attrs
    attrs = {k: first[k] for k in ("modality", "train_dataset", "model", "imageset", "units")
             if k in first}
    attrs["analysis"] = ("mean over each entry's voxels"
                         + (f" with ncsnr > {min_ncsnr}" if min_ncsnr is not None else ""))
    if min_ncsnr is not None:
        attrs["min_ncsnr"] = min_ncsnr
    return xr.DataArray(
        data, dims=("subject", "roi", "image"), name="roi_mean", attrs=attrs,
        coords={"subject": subjects, "roi": rois, **image_coords,
                "n_voxels": (("subject", "roi"), np.array([[counts[s, r] for r in rois]
                                                          for s in subjects], dtype=np.int64))})


def _as_dask(da: xr.DataArray) -> dask.array.Array:
    data = da.data
    return data if isinstance(data, dask.array.Array) else dask.array.from_array(data)


# ------------------------------------------------------------------------- computing


# ------------------------------------------------------------------------- top images


def _scores(data: Any, what: str, min_ncsnr: float | None, show_progress: bool | None
            ) -> tuple[xr.DataArray, list[int]]:
    """Computed subject-averaged ROI scores from entries (or given scores), and the subjects.

    Entries are reduced with :func:`roi_means` and computed before the average over
    subjects, so the progress bar counts the chunks of every entry.
    """
    if isinstance(data, xr.DataArray) and _space(data) is None:
        if "image" not in data.dims:
            raise InputError(f"{what} needs scores with an 'image' dimension or fMRI "
                             f"entries; got dims {data.dims}")
    else:
        data = roi_means(_entry_list(data, what), min_ncsnr=min_ncsnr)
    (data,) = compute(data, show_progress=show_progress, desc=what)
    subjects = ([int(s) for s in np.atleast_1d(data["subject"].values)]
                if "subject" in data.coords else [])
    if "subject" in data.dims:
        data = data.mean("subject", keep_attrs=True)
    return data, subjects


def top_images(
    da: xr.DataArray | Entries, k: int = 10, *, min_ncsnr: float | None = None,
    largest: bool = True, show_progress: bool | None = None,
) -> xr.DataArray:
    """The ``k`` images with the highest (or lowest) mean ROI response, best first.

    Parameters
    ----------
    da : xarray.DataArray or xarray.DataTree
        An fMRI entry; or several subjects of one ROI (a DataTree from
        :func:`nest_data.open_many`, a dict or a list), ranked by their subject-averaged
        ROI mean; or scores with the single dim ``image`` (e.g.
        ``roi_means(tree).mean("subject").sel(roi="FFA-1")``).
    k : int
        How many images (all of them if there are fewer).
    min_ncsnr : float, optional
        Voxel selection, as in :func:`roi_mean` (ignored for scores).
    largest : bool
        ``False`` returns the images that drive the ROI least, lowest first.
    show_progress : bool, optional
        Progress bar while the scores are computed (default: ``NEST_DATA_PROGRESS``, on).

    Returns
    -------
    xarray.DataArray
        The ``k`` scores (computed), dim ``image``, best first, with the image labels as
        coordinates.  Ties keep image order.

    Examples
    --------
    >>> import nest_data
    >>> da = nest_data.open(imageset="things", subject=1, roi="V1", location="demo")
    >>> top = nest_data.top_images(da, k=3)
    >>> bool(top[0] >= top[1] >= top[2])
    True

    Subject-averaged, for the images that drive a face area least:

    >>> tree = nest_data.open_many(imageset="things", subject=[1, 2, 3], roi="FFA-1",
    ...                            location="demo")
    >>> bottom = nest_data.top_images(tree, k=2, min_ncsnr=0.5, largest=False)
    >>> bottom.sizes["image"], bool(bottom[0] <= bottom[1])
    (2, True)
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive number of images, got {k!r}")
    if _space(da) is not None:
        (scores,) = compute(roi_mean(cast(xr.DataArray, da), min_ncsnr=min_ncsnr),
                            show_progress=show_progress, desc="top_images")
    else:
        scores, _ = _scores(da, "top_images", min_ncsnr, show_progress)
        if "roi" in scores.dims:
            if scores.sizes["roi"] != 1:
                raise InputError(
                    f"top_images ranks one ROI; got {scores.sizes['roi']} "
                    f"({', '.join(map(str, scores['roi'].values))}). Open one ROI, or pass "
                    "nest_data.roi_means(tree).mean('subject').sel(roi=...)")
            scores = scores.isel(roi=0)
    if scores.dims != ("image",):
        raise InputError(f"top_images needs one score per image; got dims {scores.dims}")
    values = scores.values if largest else -scores.values
    order = np.argsort(-values, kind="stable")[: min(int(k), values.size)]
    return scores.isel(image=order)


# ------------------------------------------------------------------------- RNC


def univariate_rnc(
    data: Entries | xr.DataArray,
    rois: Sequence[str] | None = None,
    *,
    n_images: int = 25,
    margin: float = 0.04,
    min_ncsnr: float | None = 0.5,
    n_batches: int = 1_000_000,
    batch_size: int = 25,
    seed: int = 20200220,
    standardize: bool = False,
    show_progress: bool | None = None,
) -> xr.Dataset:
    """Univariate relational neural control (RNC) of two ROIs across subjects.

    Finds the images that drive two ROIs together (*align*) or apart (*disentangle*),
    following Gifford et al. (2025), https://github.com/gifale95/RNC:

    1. **Scores.**  For every image and ROI, the mean over subjects of the mean over that
       subject's voxels with ``ncsnr > min_ncsnr`` (:func:`roi_means`; subjects have
       different voxel counts, so each subject is averaged first).  This is the only pass
       over the responses: it runs on the active dask scheduler.
    2. **Baseline.**  ``n_batches`` batches of ``batch_size`` distinct images are drawn
       uniformly at random (``numpy.random.default_rng(seed)``; the same batches for both
       ROIs).  Each batch's mean score is one sample of the ROI's null distribution; the
       ROI's baseline is the score of the batch whose mean is closest to the mean of the
       null distribution (RNC's choice: a real image batch; it differs from the null mean
       by a tiny amount).
    3. **Selection.**  With ``d_r = score_r - baseline_r`` (divided by the SD of the ROI's
       image scores if ``standardize``), every image is ranked, for each condition, by
       ``s_1 * d_1 + s_2 * d_2`` with the condition's signs ``(s_1, s_2)``: ``up_up``
       (+, +) and ``down_down`` (-, -) align the ROIs (RNC's summed responses),
       ``up_down`` (+, -) and ``down_up`` (-, +) disentangle them (the difference).  Only
       images whose score is at least ``margin`` beyond the baseline in the condition's
       direction for *both* ROIs are kept (``s_r * (score_r - baseline_r) >= margin``); the
       ``n_images`` best of them are returned (fewer if fewer qualify).  The four
       conditions are disjoint.

    Parameters
    ----------
    data : xarray.DataTree, dict or list of DataArray, or xarray.DataArray
        fMRI entries of every subject for both ROIs (e.g. ``nest_data.open_many(...,
        roi=["V1", "FFA-1"])``), or precomputed scores with dims ``(roi, image)`` or
        ``(subject, roi, image)`` (:func:`roi_means`; then ``min_ncsnr`` is not used).
    rois : pair of str, optional
        ROI 1 and ROI 2 (default: the two ROIs of ``data``, in order).
    n_images : int
        Images per condition (RNC: 25).
    margin : float
        How far beyond its baseline (in response units) an ROI's score must be (RNC: 0.04).
    min_ncsnr : float or None
        Voxel selection (RNC: 0.5).
    n_batches, batch_size : int
        Random image batches of the null distribution (RNC: 1,000,000 of 25).
    seed : int
        Seed of the random batches (RNC's: 20200220).
    standardize : bool
        Divide each ROI's deviation from its baseline by the SD of its scores before
        ranking, so an ROI with larger responses does not dominate (RNC: False).
    show_progress : bool, optional
        Progress bar while the scores are computed.

    Returns
    -------
    xarray.Dataset
        Dims ``roi`` (2), ``image`` (the selected images, condition by condition, best
        first), ``batch`` and ``batch_image``.  Coordinates on ``image``: the image labels,
        ``condition`` (``up_up``, ``down_down``, ``up_down``, ``down_up``: the directions of
        ROI 1 and ROI 2), ``control`` (``align`` / ``disentangle``) and ``selection_rank``
        (1 = best in its condition).  Variables: ``score`` (roi, image) of the selected images,
        ``baseline`` (roi), ``null_mean`` and ``null_sd`` (roi, over the batches),
        ``null_distribution`` (roi, batch), ``baseline_images`` (roi, batch_image: the
        images of each ROI's baseline batch).  ``attrs`` record every parameter.

    Raises
    ------
    InputError
        Not exactly two distinct ROIs, a batch larger than the image set, or a parameter
        out of range; the message says which values are valid.

    Examples
    --------
    >>> import nest_data
    >>> tree = nest_data.open_many(imageset="nsd", subject=[1, 2, 3], roi=["V1", "FFA-1"],
    ...                            location="demo")
    >>> res = nest_data.univariate_rnc(tree, n_images=3, n_batches=1000, batch_size=5,
    ...                                margin=0.0, show_progress=False)
    >>> res.score.dims, res.roi.values.tolist()
    (('roi', 'image'), ['V1', 'FFA-1'])
    >>> sorted(set(res.condition.values.tolist()) - {"up_up", "down_down", "up_down",
    ...                                              "down_up"})
    []
    >>> up = res.sel(image=res.condition == "up_up")
    >>> bool((up.score >= res.baseline).all())
    True
    """
    _positive_int(n_images, "n_images")
    _positive_int(n_batches, "n_batches")
    _positive_int(batch_size, "batch_size")
    if not math.isfinite(margin) or margin < 0:
        raise InputError(f"margin must be a finite number >= 0 (response units; RNC uses "
                         f"0.04), got {margin!r}")
    from_entries = not (isinstance(data, xr.DataArray) and _space(data) is None)
    das: list[xr.DataArray] = []
    if from_entries:
        das = _entry_list(data, "univariate_rnc")
        present = list(dict.fromkeys(str(da.attrs.get("roi")) for da in das))
    elif isinstance(data, xr.DataArray) and "roi" in data.dims:
        present = [str(r) for r in data["roi"].values]
    else:
        raise InputError(f"univariate_rnc needs scores of two ROIs (dims roi, image); "
                         f"got dims {getattr(data, 'dims', None)}")
    pair = [str(r) for r in rois] if rois is not None else present
    if len(pair) != 2 or pair[0] == pair[1] or not set(pair) <= set(present):
        raise InputError(
            f"univariate_rnc compares two distinct ROIs; got rois={pair!r} and the data holds "
            f"{', '.join(present)}. Pass rois=(roi_1, roi_2) naming two of them.")
    source: list[xr.DataArray] | xr.DataArray
    if from_entries:
        source = [da for da in das if da.attrs.get("roi") in pair]
        n_total = source[0].sizes["image"]
    else:
        source = cast(xr.DataArray, data).sel(roi=pair)
        n_total = source.sizes["image"]
    if batch_size > n_total:
        raise InputError(f"batch_size={batch_size} is more than the {n_total} images; use "
                         f"batch_size <= {n_total}")
    scores, subjects = _scores(source, "univariate_rnc", min_ncsnr, show_progress)
    scores = scores.sel(roi=pair).transpose("roi", "image")
    values = np.asarray(scores.values, dtype=np.float64)

    null, baseline_images = _null_distribution(values, batch_size, n_batches, seed)
    null_mean = null.mean(axis=1)
    baseline = values[np.arange(2)[:, None], baseline_images].mean(axis=1)
    deviation = values - baseline[:, None]
    sd = values.std(axis=1)
    if standardize:
        if not (sd > 0).all():
            raise InputError("standardize=True needs scores that vary across images; an "
                             "ROI has the same score for every image")
        deviation = deviation / sd[:, None]

    picked: list[np.ndarray] = []
    labels: list[tuple[str, str]] = []
    for name, control, s1, s2 in RNC_CONDITIONS:
        signs = np.array([s1, s2], dtype=np.float64)[:, None]
        ok = ((signs * (values - baseline[:, None])) >= margin).all(axis=0)
        key = (signs * deviation).sum(axis=0)
        candidates = np.flatnonzero(ok)
        chosen = candidates[np.argsort(-key[candidates], kind="stable")][:n_images]
        if chosen.size < n_images:
            logger.info("univariate_rnc %s: %d of %d images qualify", name, chosen.size,
                        n_images)
        picked.append(chosen)
        labels += [(name, control)] * chosen.size
    index = np.concatenate(picked).astype(np.int64)
    selected = scores.isel(image=index)
    image_coords = {str(n): ("image", c.values, c.attrs) for n, c in selected.coords.items()
                    if c.dims == ("image",)}
    ranks = np.concatenate([np.arange(1, p.size + 1) for p in picked]).astype(np.int64)
    attrs = {k: v for k, v in scores.attrs.items() if k != "analysis"}
    attrs.update({
        "analysis": "univariate relational neural control (Gifford et al. 2025)",
        "roi_1": pair[0], "roi_2": pair[1], "n_images": n_images, "margin": margin,
        "n_batches": n_batches, "batch_size": batch_size, "seed": seed,
        "standardize": int(standardize), "subjects": subjects,
    })
    if min_ncsnr is not None and from_entries:
        attrs["min_ncsnr"] = min_ncsnr
    return xr.Dataset(
        {
            "score": (("roi", "image"), np.asarray(selected.values)),
            "baseline": ("roi", baseline),
            "null_mean": ("roi", null_mean),
            "null_sd": ("roi", null.std(axis=1)),
            "null_distribution": (("roi", "batch"), null),
            "baseline_images": (("roi", "batch_image"), baseline_images),
        },
        coords={"roi": pair, **image_coords,
                "condition": ("image", np.array([c for c, _ in labels], dtype=object)),
                "control": ("image", np.array([c for _, c in labels], dtype=object)),
                "selection_rank": ("image", ranks)},
        attrs=attrs,
    )


def _positive_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")


def random_batches(n: int, size: int, count: int, seed: int) -> np.ndarray:
    """``count`` batches of ``size`` distinct indices in ``range(n)``, uniformly at random.

    The batches :func:`univariate_rnc` draws for its baseline (it draws them block by
    block, without holding them all).

    Returns
    -------
    numpy.ndarray
        ``(count, size)`` int64, each row sorted.

    Examples
    --------
    >>> b = random_batches(73000, 25, 4, seed=0)
    >>> b.shape, bool((b[:, 1:] > b[:, :-1]).all())
    ((4, 25), True)
    """
    return np.concatenate(list(_batch_blocks(n, size, count, seed)))


def _batch_blocks(n: int, size: int, count: int, seed: int) -> Iterator[np.ndarray]:
    """The batches of :func:`random_batches`, in blocks of at most ``_BATCH_BLOCK`` rows.

    Rows are drawn with replacement and the rows holding a repeated index are drawn again
    (exact, and fast when ``size**2`` is small against ``n``); when most rows would repeat,
    each row is the first ``size`` indices of a random permutation instead.
    """
    rng = np.random.default_rng(seed)
    p_distinct = math.exp(sum(math.log1p(-i / n) for i in range(size)))
    for start in range(0, count, _BATCH_BLOCK):
        rows = min(_BATCH_BLOCK, count - start)
        if p_distinct >= 0.25:
            block = np.sort(rng.integers(0, n, (rows, size)), axis=1)
            while True:
                bad = np.flatnonzero((block[:, 1:] == block[:, :-1]).any(axis=1))
                if bad.size == 0:
                    break
                block[bad] = np.sort(rng.integers(0, n, (bad.size, size)), axis=1)
        else:
            block = np.sort(np.argsort(rng.random((rows, n)), axis=1)[:, :size], axis=1)
        yield block


def _null_distribution(values: np.ndarray, size: int, count: int, seed: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Batch means ``(roi, batch)`` of ``values`` ``(roi, image)`` and each ROI's baseline
    batch (the one whose mean is closest to the mean of all), in bounded memory."""
    null = np.empty((values.shape[0], count))
    for i, block in enumerate(_batch_blocks(values.shape[1], size, count, seed)):
        start = i * _BATCH_BLOCK
        null[:, start:start + block.shape[0]] = values[:, block].mean(axis=2)
    best = np.abs(null - null.mean(axis=1, keepdims=True)).argmin(axis=1)
    chosen = np.empty((values.shape[0], size), dtype=np.int64)
    for i, block in enumerate(_batch_blocks(values.shape[1], size, count, seed)):
        here = (best >= i * _BATCH_BLOCK) & (best < i * _BATCH_BLOCK + block.shape[0])
        chosen[here] = block[best[here] - i * _BATCH_BLOCK]
        if i * _BATCH_BLOCK + block.shape[0] > best.max():
            break
    return null, chosen


# ------------------------------------------------------------------------- RSA


def _image_positions(da: xr.DataArray, images: Any) -> np.ndarray:
    """Integer positions along ``image`` for ``images`` (None, slice, ints or booleans)."""
    n = da.sizes["image"]
    if images is None:
        return np.arange(n)
    if isinstance(images, slice):
        return np.arange(n)[images]
    values = np.asarray(images.values if isinstance(images, xr.DataArray) else images)
    if values.ndim != 1:
        raise InputError(f"images= must be one-dimensional, got shape {values.shape}")
    if values.dtype == bool:
        if values.size != n:
            raise InputError(f"a boolean images= mask needs one value per image ({n}), got "
                             f"{values.size}")
        return np.flatnonzero(values)
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise InputError(f"images= takes integer positions along 'image' (0 to {n - 1}), "
                         f"a boolean mask or a slice; got dtype {values.dtype}")
    values = values.astype(np.int64)
    if values.size and (values.min() < -n or values.max() >= n):
        raise InputError(f"images= holds positions out of range: valid are 0 to {n - 1} "
                         f"(or negative from the end); got {values.min()} to "
                         f"{values.max()}")
    return np.where(values < 0, values + n, values)


def _images(da: xr.DataArray, positions: np.ndarray) -> xr.DataArray:
    """``da.isel(image=positions)``; for stored values, reading only the inner chunks needed."""
    taken = take_images(da.data, positions) if da.dims[0] == "image" else None
    if taken is None:
        return da.isel(image=positions)
    coords = {name: coord.isel(image=positions) if "image" in coord.dims else coord
              for name, coord in da.coords.items()}
    return xr.DataArray(taken, dims=da.dims, coords=coords, attrs=da.attrs, name=da.name)


def _features(da: xr.DataArray, min_ncsnr: float | None) -> xr.DataArray:
    """``da`` with every non-image dim flattened into one trailing feature dim."""
    if "image" not in da.dims:
        raise InputError(f"rsm needs an entry with an 'image' dimension; got dims "
                         f"{da.dims}")
    space = _space(da)
    if space is not None:
        return _reliable(da, min_ncsnr).transpose("image", space)
    if min_ncsnr is not None:
        raise InputError("min_ncsnr= selects fMRI voxels; this entry has dims "
                         f"{da.dims}. Pass min_ncsnr=None.")
    other = [d for d in da.dims if d != "image"]
    return da.transpose("image", *other).stack(feature=other)


def rsm(
    da: xr.DataArray, images: Any = None, *, min_ncsnr: float | None = None
) -> xr.DataArray:
    """Representational similarity matrix of an image subset, computed from the responses.

    The responses of the chosen images (rows: images, columns: voxels) are z-scored per
    image across voxels (mean 0, SD 1 with ``ddof=0``) and multiplied by their own
    transpose once: ``R = Z @ Z.T / n_voxels``, the Pearson correlation between every two
    images' response patterns.  Only the chosen images are read (the stored chunks that
    hold them) and nothing of size ``n_images_total ** 2`` is ever made.

    Parameters
    ----------
    da : xarray.DataArray
        An entry from :func:`nest_data.open`.  EEG entries (and anything without a
        ``voxel`` dim) use every non-image dim, flattened, as features.
    images : optional
        Which images, in this order: integer positions along ``image`` (the image index of
        a stored entry), a boolean mask (``da.shared1000``), or a slice; default all (an
        RSM of ``n`` images holds ``n**2`` float64 values: keep ``n`` in the thousands).
    min_ncsnr : float, optional
        Use only voxels with ``ncsnr > min_ncsnr``.

    Returns
    -------
    xarray.DataArray
        ``rsm``, dims ``(image, image_2)``, float64, dask-backed; the image labels on
        ``image`` and again, suffixed ``_2``, on ``image_2``.  Images whose response is the
        same in every voxel have no correlation (NaN rows).

    Examples
    --------
    >>> import nest_data
    >>> da = nest_data.open(imageset="things", subject=1, roi="V1", location="demo")
    >>> r = nest_data.rsm(da, images=range(10), min_ncsnr=0.5)
    >>> r.dims, r.shape
    (('image', 'image_2'), (10, 10))
    >>> import numpy as np
    >>> bool(np.allclose(np.diag(r.values), 1.0))
    True
    """
    positions = _image_positions(da, images) if "image" in da.dims else np.arange(0)
    feats = _features(_images(da, positions), min_ncsnr)
    if positions.size < 2:
        raise InputError(f"an RSM needs at least 2 images; images= selects "
                         f"{positions.size}")
    if positions.size > _LARGE_RSM_IMAGES:
        logger.warning("rsm of %d images: %.1f GB when computed; compute parts of it or "
                       "choose fewer images", positions.size, positions.size**2 * 8 / 1e9)
    subset = feats
    n_features = subset.shape[1]
    rows = max(1, _RSM_BLOCK_BYTES // (8 * n_features))
    z = _as_dask(subset).rechunk({0: rows, 1: -1}).map_blocks(_zscored, dtype=np.float64)
    if z.numblocks[0] == 1:  # one task: the product of the one block with itself
        data = z.map_blocks(_correlations, chunks=(z.chunks[0], z.chunks[0]),
                            dtype=np.float64)
    else:
        data = _gram(z) / n_features
    coords: dict[str, Any] = {}
    for name, coord in subset.coords.items():
        if coord.dims == ("image",):
            coords[str(name)] = ("image", coord.values, coord.attrs)
            coords[f"{name}_2"] = ("image_2", coord.values, coord.attrs)
    attrs = {k: v for k, v in da.attrs.items()
             if k in ("modality", "train_dataset", "model", "imageset", "subject", "roi")}
    attrs["analysis"] = (f"Pearson correlation of z-scored responses over {n_features} "
                         + (f"{_space(feats)}s" if _space(feats) else "features")
                         + (f" with ncsnr > {min_ncsnr}" if min_ncsnr is not None else ""))
    return xr.DataArray(data, dims=("image", "image_2"), coords=coords, name="rsm",
                        attrs=attrs)


def _upper(matrix: xr.DataArray, what: str) -> dask.array.Array:
    """The strict upper triangle of a square RSM, as a 1-D dask array."""
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 3:
        raise InputError(f"{what} needs square RSMs of at least 3 images (from "
                         f"nest_data.rsm); got dims {matrix.dims} shape {matrix.shape}")
    rows, cols = np.triu_indices(matrix.shape[0], k=1)
    return _as_dask(matrix).vindex[rows, cols]


def _average_ranks(block: np.ndarray) -> np.ndarray:
    """Ranks (1-based) along the rows of a 2-D block, ties getting their average rank.

    A row holding NaN becomes all NaN (its correlations are undefined).
    """
    out = np.full(block.shape, np.nan, dtype=np.float64)
    for i, row in enumerate(block):
        if np.isnan(row).any():
            continue
        order = np.argsort(row, kind="mergesort")
        _, first, counts = np.unique(row[order], return_index=True, return_counts=True)
        out[i, order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return out


def _row_correlations(vectors: dask.array.Array, method: str) -> dask.array.Array:
    """Correlation matrix between the rows of ``vectors`` (Pearson, or Spearman on ranks)."""
    vectors = vectors.rechunk({0: 1, 1: -1})
    if method == "spearman":
        vectors = dask.array.map_blocks(_average_ranks, vectors, dtype=np.float64)
    z = vectors - vectors.mean(axis=1, keepdims=True)
    z = z / dask.array.sqrt((z**2).sum(axis=1, keepdims=True))
    return _gram(z)


def _zscored(block: np.ndarray) -> np.ndarray:
    """Rows z-scored across columns (mean 0, SD 1, ``ddof=0``), in float64."""
    x = block.astype(np.float64)
    x -= x.mean(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):  # a constant row: NaN, documented
        x /= np.sqrt(np.mean(x * x, axis=1, keepdims=True))
    return x


def _correlations(z: np.ndarray) -> np.ndarray:
    """``z @ z.T / n_columns`` of z-scored rows: their Pearson correlations."""
    return (z @ z.T) / z.shape[1]


def _gram(z: dask.array.Array) -> dask.array.Array:
    """``z @ z.T`` (lazy): one block per pair of row blocks, each a single matrix product."""
    with warnings.catch_warnings():
        # n row blocks make n**2 output blocks by design; dask warns about any such growth
        warnings.simplefilter("ignore", PerformanceWarning)
        return z @ z.T


def _check_method(method: str) -> None:
    if method not in ("spearman", "pearson"):
        raise InputError(f"method must be 'spearman' or 'pearson', got {method!r}")


def rsa(a: xr.DataArray, b: xr.DataArray, *,
        method: Literal["spearman", "pearson"] = "spearman") -> xr.DataArray:
    """Representational similarity analysis: how alike two RSMs of the same images are.

    The correlation (Spearman by default, with average ranks for ties; or Pearson) between
    the strict upper triangles (``i < j``) of two RSMs from :func:`rsm`.

    Parameters
    ----------
    a, b : xarray.DataArray
        RSMs of the same images in the same order, e.g. of two ROIs or two subjects.
    method : {"spearman", "pearson"}
        The correlation.

    Returns
    -------
    xarray.DataArray
        ``rsa``, a dask-backed scalar.

    Examples
    --------
    >>> import nest_data
    >>> v1, ffa = (nest_data.open(imageset="things", subject=1, roi=roi, location="demo")
    ...            for roi in ("V1", "FFA-1"))
    >>> images = range(20)
    >>> r = nest_data.rsa(nest_data.rsm(v1, images), nest_data.rsm(ffa, images))
    >>> -1 <= float(r) <= 1
    True
    """
    _check_method(method)
    dims = ("image", "image_2")
    same = a.dims == b.dims == dims and a.shape == b.shape and all(
        np.array_equal(a[d].values, b[d].values) for d in dims if d in a.coords and d in b.coords)
    if not same:
        raise InputError("rsa compares RSMs of the same images in the same order; got "
                         f"dims {a.dims} shape {a.shape} and {b.dims} shape {b.shape}. "
                         "Make both with nest_data.rsm(..., images=the same selection).")
    vectors = dask.array.stack([_upper(a, "rsa"), _upper(b, "rsa")])
    value = _row_correlations(vectors, method)[0, 1]
    return xr.DataArray(value, name="rsa",
                        attrs={"analysis": f"{method} correlation of the upper triangles of "
                               f"two RSMs of {a.shape[0]} images", "method": method})


def rsa_matrix(
    entries: Entries, images: Any = None, *, min_ncsnr: float | None = None,
    method: Literal["spearman", "pearson"] = "spearman",
) -> xr.DataArray:
    """RSA between every two entries (subjects and/or ROIs) on one image subset.

    One RSM per entry (:func:`rsm`), then the correlation between every two of their upper
    triangles (:func:`rsa`), all in one lazy graph.

    Parameters
    ----------
    entries : xarray.DataTree, dict or list of xarray.DataArray
        Entries of the same images (e.g. :func:`nest_data.open_many`).
    images, min_ncsnr :
        As in :func:`rsm`.
    method : {"spearman", "pearson"}
        The correlation between RSMs.

    Returns
    -------
    xarray.DataArray
        ``rsa``, dims ``(entry, entry_2)``, symmetric with ones on the diagonal,
        dask-backed; coordinates ``entry`` (``sub-01/V1``), ``subject``, ``roi`` and the
        same suffixed ``_2``.

    Examples
    --------
    >>> import nest_data
    >>> tree = nest_data.open_many(imageset="things", subject=[1, 2], roi=["V1", "FFA-1"],
    ...                            location="demo")
    >>> m = nest_data.rsa_matrix(tree, images=range(20), min_ncsnr=0.5)
    >>> m.entry.values.tolist()
    ['sub-01/V1', 'sub-01/FFA-1', 'sub-02/V1', 'sub-02/FFA-1']
    >>> float(m.sel(entry="sub-01/V1", entry_2="sub-01/V1").round(6))
    1.0
    """
    _check_method(method)
    das = _entry_list(entries, "rsa_matrix")
    if len(das) < 2:
        raise InputError("rsa_matrix compares at least 2 entries; got 1. Use rsm() for one")
    _shared_image_coords(das, "rsa_matrix")
    names, subjects, rois = [], [], []
    for i, da in enumerate(das):
        subject = int(da.attrs["subject"]) if "subject" in da.attrs else -1
        roi = str(da.attrs.get("roi") or "")
        subjects.append(subject)
        rois.append(roi)
        names.append(f"sub-{subject:02d}" + (f"/{roi}" if roi else "") if subject >= 0
                     else str(i))
    if len(set(names)) != len(names):
        raise InputError(f"rsa_matrix got the same entry twice ({', '.join(names)}); pass "
                         "each once")
    vectors = dask.array.stack([_upper(rsm(da, images, min_ncsnr=min_ncsnr), "rsa_matrix")
                                for da in das])
    return xr.DataArray(
        _row_correlations(vectors, method), dims=("entry", "entry_2"), name="rsa",
        coords={"entry": names, "subject": ("entry", subjects), "roi": ("entry", rois),
                "entry_2": names, "subject_2": ("entry_2", subjects),
                "roi_2": ("entry_2", rois)},
        attrs={"analysis": f"{method} correlation of the upper triangles of each entry's RSM",
               "method": method, "imageset": das[0].attrs.get("imageset", "")})
