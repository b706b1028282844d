"""Analyses on opened entries: ROI means and the images that drive an ROI most."""

from __future__ import annotations

import numpy as np
import xarray as xr

from nest_data.errors import NestDataError

__all__ = ["roi_mean", "top_images"]


def _require_fmri(da: xr.DataArray, what: str) -> None:
    if "voxel" not in da.dims:
        raise NestDataError(f"{what} needs an fMRI entry with a 'voxel' dimension; got dims "
                            f"{da.dims}. Open one with nest_data.open(..., roi='V1').")


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
        Dims ``(image,)``, with the image coordinates of ``da``.

    Examples
    --------
    >>> import nest_data
    >>> da = nest_data.open(imageset="things", subject=1, roi="V1", location="demo")
    >>> nest_data.roi_mean(da, min_ncsnr=0.5).dims
    ('image',)
    """
    _require_fmri(da, "roi_mean")
    if min_ncsnr is not None:
        if "ncsnr" not in da.coords:
            raise NestDataError("min_ncsnr= needs the 'ncsnr' voxel coordinate, which this "
                                "entry lacks; call roi_mean without min_ncsnr")
        keep = np.asarray(da["ncsnr"].values > min_ncsnr)
        if not keep.any():
            raise NestDataError(f"no voxel has ncsnr > {min_ncsnr} (max "
                                f"{float(da['ncsnr'].max()):.3f}); lower min_ncsnr")
        da = da.isel(voxel=np.flatnonzero(keep))
    # NaN-aware means cost ~20% more; stores record whether they hold any NaN at all.
    out = da.mean("voxel", skipna=da.attrs.get("nan_count", 1) != 0)
    out.attrs = {**da.attrs, "analysis": f"mean over {da.sizes['voxel']} voxels"
                 + (f" with ncsnr > {min_ncsnr}" if min_ncsnr is not None else "")}
    return out.rename("roi_mean")


def top_images(
    da: xr.DataArray, k: int = 10, *, min_ncsnr: float | None = None, largest: bool = True
) -> xr.DataArray:
    """The ``k`` images with the highest (or lowest) mean ROI response, best first.

    Parameters
    ----------
    da : xarray.DataArray
        An fMRI entry.
    k : int
        How many images.
    min_ncsnr : float, optional
        Voxel selection, as in :func:`roi_mean`.
    largest : bool
        ``False`` returns the images that drive the ROI least.

    Returns
    -------
    xarray.DataArray
        The ``k`` scores, dim ``image``, with all image labels as coordinates.

    Examples
    --------
    >>> import nest_data
    >>> da = nest_data.open(imageset="things", subject=1, roi="V1", location="demo")
    >>> top = nest_data.top_images(da, k=3)
    >>> bool(top[0] >= top[1] >= top[2])
    True
    """
    if k < 1:
        raise NestDataError(f"k must be a positive number of images, got {k}")
    scores = roi_mean(da, min_ncsnr=min_ncsnr).compute()
    values = scores.values if largest else -scores.values
    order = np.argsort(-values, kind="stable")[: min(k, values.size)]
    return scores.isel(image=order)
