"""Univariate relational neural control (RNC) for a pair of ROIs."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any, cast

import numpy as np
import xarray as xr

from nest_data import _config
from nest_data.analysis.means import Entries, _entry_list, _space
from nest_data.analysis.top import _scores
from nest_data.errors import InputError

logger = logging.getLogger("nest_data")

__all__ = ["RNC_CONDITIONS", "random_batches", "univariate_rnc"]

#: Control conditions of univariate RNC: (name, control, sign for ROI 1, sign for ROI 2).
RNC_CONDITIONS = (("up_up", "align", 1, 1), ("down_down", "align", -1, -1),
                  ("up_down", "disentangle", 1, -1), ("down_up", "disentangle", -1, 1))

_BATCH_BLOCK = 65536  # random batches drawn at a time (bounded memory for 10^6 batches)


@_config.progress_option
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
    scores, subjects = _scores(source, "univariate_rnc", min_ncsnr)
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
