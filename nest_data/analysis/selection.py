"""Selecting images of an entry: by position, mask or slice, reading only what holds them."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from nest_data._dask import take_images
from nest_data.errors import InputError

__all__ = ["image_positions", "select_images"]


def image_positions(da: xr.DataArray, images: Any) -> np.ndarray:
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


def select_images(da: xr.DataArray, images: Any) -> xr.DataArray:
    """``da.isel(image=images)`` that reads only the stored chunks holding those images.

    dask answers ``da.isel(image=[...])`` by reading every block that holds a chosen image
    whole (a shard of about 8 MB) and selecting after; this reads, per shard, only the
    inner chunks that hold the images (each still checked against its CRC-32C): from local
    files in tasks over whole shards that run side by side, from a remote store in one task
    that sends every shard's requests at once.  The result is the same, lazy, with the same
    labels.  Anything that is not the stored values of an entry (a computed or rechunked
    array) is selected with ``isel``.

    Parameters
    ----------
    da : xarray.DataArray
        An entry from :func:`nest_data.open` (any modality).
    images : array-like of int, array-like of bool, or slice
        Which images, in this order: integer positions along ``image`` (negative ones count
        from the end; repeats allowed), a boolean mask with one value per image
        (``da.shared1000``), or a slice.

    Returns
    -------
    xarray.DataArray
        ``da.isel(image=images)``, dask-backed.

    Examples
    --------
    >>> import nest_data
    >>> da = nest_data.open(imageset="things", subject=1, roi="V1", location="demo")
    >>> few = nest_data.select_images(da, [7, 2, 19])
    >>> few.sizes["image"], bool((few == da.isel(image=[7, 2, 19])).all())
    (3, True)
    """
    if "image" not in da.dims:
        raise InputError(f"select_images needs an entry with an 'image' dimension; got dims "
                         f"{da.dims}")
    positions = image_positions(da, images)
    taken = take_images(da.data, positions) if da.dims[0] == "image" else None
    if taken is None:
        return da.isel(image=positions)
    # coordinate Variables, not DataArrays: xarray builds a DataArray per coordinate read
    coords = {name: var.isel(image=positions) if "image" in var.dims else var
              for name, var in da.coords.variables.items()}
    return xr.DataArray(taken, dims=da.dims, coords=coords, attrs=da.attrs, name=da.name)
