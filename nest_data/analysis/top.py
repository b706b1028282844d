"""The images that drive an ROI (or a subject-averaged ROI) most or least."""

from __future__ import annotations

import logging
from typing import Any, cast

import numpy as np
import xarray as xr

from nest_data import _config
from nest_data._progress import compute
from nest_data.analysis.means import Entries, _entry_list, _space, roi_mean, roi_means
from nest_data.errors import InputError

logger = logging.getLogger("nest_data")

__all__ = ["top_images"]


def _scores(data: Any, what: str, min_ncsnr: float | None) -> tuple[xr.DataArray, list[int]]:
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
    (data,) = compute(data, desc=what)
    subjects = ([int(s) for s in np.atleast_1d(data["subject"].values)]
                if "subject" in data.coords else [])
    if "subject" in data.dims:
        data = data.mean("subject", keep_attrs=True)
    return data, subjects


@_config.progress_option
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
                            desc="top_images")
    else:
        scores, _ = _scores(da, "top_images", min_ncsnr)
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
