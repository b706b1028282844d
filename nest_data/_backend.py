"""The ``nest`` engine for xarray: ``xr.open_dataset(url, engine="nest")``.

xarray's own API (``open_dataset``, ``open_mfdataset``) then reads nest-data stores through
nest-data's read path: CRC-32C checks on every read, missing objects as errors naming them,
``verify`` and the chunk cache, retries on flaky servers.  (intake-esm hands a store's URL
only to its ``zarr`` engine, so its collections read through zarr.)

xarray passes its CF decoding keywords to every engine; nest-data stores hold plain values
with their units in attributes (no scale factors, fill values or encoded times), so the engine
accepts them and has nothing to decode.  ``chunks=`` is applied by xarray itself after the
engine returns (the engine never sees it), so a bad ``chunks`` gets xarray's own error.
``responses`` records its dask chunks (stored shards) as ``encoding["preferred_chunks"]``, so
xarray's own choices keep them: ``chunks={}`` and :func:`xarray.open_mfdataset` give the
chunks :func:`nest_data.open` gives, ``chunks="auto"`` whole multiples of them, and chunks
that split a shard get xarray's warning.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import xarray as xr
from xarray.backends import BackendEntrypoint

from nest_data._format import AUX_GROUP
from nest_data.errors import InputError, UnknownKeyError

__all__ = ["CF_DECODERS", "GROUPS", "NestBackendEntrypoint"]

#: xarray's decoding keywords, passed to every engine; nest-data stores need no decoding.
CF_DECODERS = ("mask_and_scale", "decode_times", "decode_timedelta", "use_cftime",
               "concat_characters", "decode_coords")
#: The groups of a nest-data store: the root (None) and the encoder's metadata.
GROUPS = (None, AUX_GROUP)
_OWN = ("storage_options", "chunk_cache", "verify", "load_labels", "roi", "group")


class NestBackendEntrypoint(BackendEntrypoint):
    """Open a nest-data store (a ``.zarr`` folder or URL) as a Dataset, lazily.

    ``responses`` comes back as a dask array of one stored shard per chunk (several for a
    remote store), the labels as NumPy arrays (text as fixed-width ``<U``), exactly as
    :func:`nest_data.open_store`.

    Keywords: ``storage_options`` (a dict of fsspec options), ``verify`` (bool: check every
    chunk read against the manifest), ``load_labels`` (bool: False reads the labels on first
    use; xarray still builds the index of each dimension coordinate unless
    ``create_default_indexes=False``), ``roi`` (a surface store's ROI), ``group`` (None for
    the responses and labels, ``"encoder"`` for the encoder's metadata), and
    ``chunk_cache`` (bool: nest-data's chunk cache for remote stores, what ``cache=`` is to
    :func:`nest_data.open`; ``cache=`` here is xarray's own in-memory cache, which xarray
    keeps for itself).  xarray's CF
    decoding keywords (``decode_cf``, ``mask_and_scale``, ``decode_times``,
    ``decode_timedelta``, ``use_cftime``, ``concat_characters``, ``decode_coords``) are
    accepted and change nothing: nest-data stores need no CF decoding.

    Examples
    --------
    >>> import nest_data, xarray as xr
    >>> cat = nest_data.catalog()
    >>> url = cat.location("demo").store(cat.resolve(imageset="things", subject=1, roi="V1"))
    >>> ds = xr.open_dataset(url, engine="nest")
    >>> ds.responses.dims
    ('image', 'voxel')
    >>> xr.open_dataset(url, engine="nest", decode_times=False).responses.dims
    ('image', 'voxel')
    >>> auto = xr.open_dataset(url, engine="nest", chunks="auto")
    >>> auto.concept.dtype.kind  # fixed-width text: dask can size it
    'U'
    """

    description = "nest-data stores of in silico neural responses, read with their checks"
    url = "https://github.com/nest-data/nest-data"
    open_dataset_parameters = ("filename_or_obj", "drop_variables", *_OWN, *CF_DECODERS)

    def open_dataset(  # type: ignore[override]
        self,
        filename_or_obj: str | os.PathLike[Any],
        *,
        drop_variables: str | Iterable[str] | None = None,
        storage_options: Mapping[str, Any] | None = None,
        chunk_cache: bool | None = None,
        verify: bool | None = None,
        load_labels: bool = True,
        roi: str | None = None,
        group: str | None = None,
        mask_and_scale: Any = None,
        decode_times: Any = None,
        decode_timedelta: Any = None,
        use_cftime: Any = None,
        concat_characters: Any = None,
        decode_coords: Any = None,
        **unknown: Any,
    ) -> xr.Dataset:
        from nest_data._open import _open_url
        from nest_data._redact import redact_url
        from nest_data._urls import check_storage_options

        url = _check_arguments(filename_or_obj, unknown, chunk_cache=chunk_cache, verify=verify,
                               load_labels=load_labels, roi=roi)
        check_storage_options(storage_options)
        where = _group(group)
        ds = _open_url(url, dict(storage_options or {}), None, where, cache=chunk_cache,
                       verify=verify, load_labels=load_labels, roi=roi)
        if where is not None and not ds.variables:
            raise UnknownKeyError(f"the store {url} has no {where!r} group (a store written "
                                  "without its encoder's metadata); open its root with "
                                  "group=None")
        if drop_variables is not None:
            names = [drop_variables] if isinstance(drop_variables, str) else drop_variables
            ds = ds.drop_vars(list(names), errors="ignore")
        # xarray records the URL it was given unless the engine did: never its credentials
        ds.encoding["source"] = redact_url(url)
        return ds

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        """Only when asked for by name (``engine="nest"``): zarr's engine opens the rest."""
        return False


def _check_arguments(filename_or_obj: Any, unknown: Mapping[str, Any], *, chunk_cache: Any,
                     verify: Any, load_labels: Any, roi: Any) -> str:
    """The store's URL, once every argument the engine takes is of a usable type."""
    if unknown:
        given = ", ".join(unknown)  # names only: a value may be a misplaced credential
        raise InputError(f"the nest engine does not know {given}; it takes "
                         f"{', '.join(_OWN)}, and xarray's decoding keywords (ignored: "
                         "nest-data stores need no CF decoding). Remove the others, or open "
                         "the store with nest_data.open_store(url, ...)")
    if not isinstance(filename_or_obj, (str, os.PathLike)) or not os.fspath(filename_or_obj):
        raise InputError(f"xr.open_dataset({filename_or_obj!r}, engine='nest'): give the path "
                         "or URL of a nest-data store (a .zarr folder), e.g. one from "
                         "nest_data.catalog().location('demo').store(entry)")
    problems = [f"{name}={value!r} (True, False or None)" for name, value in
                (("chunk_cache", chunk_cache), ("verify", verify))
                if value not in (None, True, False)]
    if not isinstance(load_labels, bool):
        problems.append(f"load_labels={load_labels!r} (True or False)")
    if roi is not None and not isinstance(roi, str):
        problems.append(f"roi={roi!r} (a surface store's ROI name, e.g. 'FFA-1', or None)")
    if problems:
        raise InputError("the nest engine cannot use " + "; ".join(problems)
                         + "; give values of those types")
    url = os.fspath(filename_or_obj)
    return url if isinstance(url, str) else url.decode()


def _group(group: Any) -> str | None:
    """``group=`` as a store group: None (also ``""`` or ``"/"``: the root) or
    ``"encoder"`` (also ``"/encoder"``)."""
    name = group.strip("/") if isinstance(group, str) else group
    if name in ("", None):
        return None
    if name not in GROUPS:
        raise UnknownKeyError(f"group={group!r}: a nest-data store has the groups None (the "
                              f"root: responses and labels) and {AUX_GROUP!r} (the encoder's "
                              "metadata); pass one of them, or leave group out")
    return str(name)
