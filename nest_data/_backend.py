"""The ``nest`` engine for xarray: ``xr.open_dataset(url, engine="nest")``.

xarray's own API (``open_dataset``, ``open_mfdataset``) then reads nest-data stores through
nest-data's read path: CRC-32C checks on every read, missing objects as errors naming them,
``verify`` and the chunk cache, retries on flaky servers.  (intake-esm hands a store's URL
only to its ``zarr`` engine, so its collections read through zarr.)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import xarray as xr
from xarray.backends import BackendEntrypoint

__all__ = ["NestBackendEntrypoint"]


class NestBackendEntrypoint(BackendEntrypoint):
    """Open a nest-data store (a ``.zarr`` folder or URL) as a Dataset, lazily.

    ``responses`` comes back as a dask array of one stored shard per chunk (several for a
    remote store), the labels as NumPy arrays, exactly as :func:`nest_data.open_store`.

    Examples
    --------
    >>> import nest_data, xarray as xr
    >>> cat = nest_data.catalog()
    >>> url = cat.location("demo").store(cat.resolve(imageset="things", subject=1, roi="V1"))
    >>> ds = xr.open_dataset(url, engine="nest")
    >>> ds.responses.dims
    ('image', 'voxel')
    """

    description = "nest-data stores of in silico neural responses, read with their checks"
    url = "https://github.com/nest-data/nest-data"
    open_dataset_parameters = ("filename_or_obj", "drop_variables", "storage_options",
                               "cache", "verify", "load_labels", "roi", "group")

    def open_dataset(  # type: ignore[override]
        self,
        filename_or_obj: str | os.PathLike[Any],
        *,
        drop_variables: str | Iterable[str] | None = None,
        storage_options: Mapping[str, Any] | None = None,
        cache: bool | None = None,
        verify: bool | None = None,
        load_labels: bool = True,
        roi: str | None = None,
        group: str | None = None,
    ) -> xr.Dataset:
        from nest_data._open import _open_url
        from nest_data._urls import check_storage_options

        check_storage_options(storage_options)
        ds = _open_url(os.fspath(filename_or_obj), dict(storage_options or {}), None, group,
                       cache=cache, verify=verify, load_labels=load_labels, roi=roi)
        if drop_variables is not None:
            names = [drop_variables] if isinstance(drop_variables, str) else drop_variables
            ds = ds.drop_vars(list(names), errors="ignore")
        return ds

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        """Only when asked for by name (``engine="nest"``): zarr's engine opens the rest."""
        return False
