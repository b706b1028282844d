"""Opening entries as labelled, lazy xarray objects."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr
import zarr
import zarr.api.asynchronous
from dask.base import is_dask_collection, tokenize
from zarr.core.sync import sync

from nest_data import _config
from nest_data._cache import ChunkCache
from nest_data._catalog import Catalog, Entry, Root
from nest_data._catalog import catalog as default_catalog
from nest_data._dask import dask_array
from nest_data._format import AUX_GROUP, DATA_VAR, read_store_attrs
from nest_data._labels import consolidated, read_labels
from nest_data._reader import ShardReader, shard_reader
from nest_data._storage import NestStore, make_store, quiet_consolidated
from nest_data._surface import ROI_AUX_PREFIX
from nest_data._urls import check_storage_options, is_local
from nest_data.errors import InputError, StoreFormatError, StoreNotFoundError

logger = logging.getLogger("nest_data")

__all__ = ["open", "open_many", "open_metadata", "open_store"]

#: Stored chunks per dask task for remote stores (local stores: one).
REMOTE_CHUNKS_PER_TASK = 8


def open(
    *,
    imageset: str | None = None,
    subject: int | str | None = None,
    roi: str | None = None,
    modality: str | None = None,
    train_dataset: str | None = None,
    model: str | None = None,
    location: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    chunks: Mapping[str, int] | None = None,
    cache: bool | None = None,
    verify: bool | None = None,
    load_labels: bool = True,
    images: Any = None,
    catalog: Catalog | None = None,
) -> xr.DataArray:
    """Open one entry of the NEST collection as a lazy, labelled DataArray.

    Only metadata is read; values are read (a chunk at a time) when computed.

    Parameters
    ----------
    imageset : {"nsd", "imagenet_val", "things"}
        The image set.
    subject : int or str
        Subject number (``1``, ``"01"`` and ``"sub-01"`` all work).
    roi : str, optional
        fMRI region of interest (e.g. ``"V1"``, ``"FFA-1"``); omit for EEG.  For the
        fsaverage model (``train_dataset="nsd_fsaverage"``), one of BERG's 31 surface ROIs,
        read from the subject's one whole-surface store (only the vertex chunks holding the
        ROI); omitted, the whole surface.
    modality, train_dataset, model : str, optional
        Inferred when unambiguous (``roi=`` implies fMRI; ``modality="eeg"`` picks EEG).
    location : str, optional
        A catalog location name (``"demo"``, ``"local"``, or one you added), a folder or an
        fsspec URL.  Default: ``NEST_DATA_LOCATION``, then ``NEST_DATA_ROOT``.
    storage_options : dict, optional
        fsspec options, merged over the location's own.
    chunks : dict, optional
        Dask chunks.  The default is one stored shard (about 8 MB) per dask chunk for local
        stores and eight for remote ones, fetched concurrently.  A selection still reads only
        what it needs: one image is one inner chunk of at most 128 KB (or the image).
    cache : bool, optional
        Keep the chunks read from a remote store in the local disk cache, so reading them
        again makes no request (default: ``NEST_DATA_CACHE``, then off; see
        ``nest-data cache info``).  Local stores are never cached.
    verify : bool, optional
        Check every object read against the SHA-256 recorded in the store (default:
        ``NEST_DATA_VERIFY``, then off; selections then read whole shards); a tampered one
        raises ChecksumError naming it.  Without it, every inner chunk of ``responses`` is
        still checked against its CRC-32C.
    images : optional
        Not taken: ``open`` reads stored responses only.  Responses to images of your own
        come from :func:`nest_data.encode` (computed now, labelled the same way) or
        :func:`nest_data.generate` (a store to open with :func:`open_store`); passing
        ``images`` raises :class:`~nest_data.errors.InputError` saying so.
    load_labels : bool
        Read the coordinate arrays (ncsnr, concept, x/y/z...) now, in one concurrent batch,
        so they can be used for selection.  ``False`` keeps them lazy and builds no index
        (select with ``isel``): opening then reads the consolidated metadata only (one
        request for a remote store).
    catalog : Catalog, optional
        The catalog to resolve keys with (default: :func:`nest_data.catalog`).

    Returns
    -------
    xarray.DataArray
        ``responses``, dims ``(image, voxel)`` for fMRI, ``(image, vertex)`` for the
        fsaverage surface, or ``(image, repetition, channel, time)`` for EEG, dask-backed.

    Raises
    ------
    UnknownKeyError, AmbiguousKeyError
        Bad or missing keys; the message lists the valid values.
    LocationError
        No location configured, or an unknown location name.
    StoreNotFoundError
        No store where the entry should be; the message says where it looked.

    Examples
    --------
    >>> import nest_data
    >>> da = nest_data.open(imageset="things", subject=1, roi="V1", location="demo")
    >>> da.dims
    ('image', 'voxel')
    >>> float(da.isel(image=0).mean()) != 0
    True
    """
    if images is not None:
        raise InputError("open() reads stored responses; for images of your own, call "
                         "nest_data.encode(images, subject=..., roi=..., location=...), which "
                         "returns their responses in the same labelled form (or write a store "
                         "of them with nest_data.generate and open it with open_store)")
    cat = catalog or default_catalog()
    entry = cat.resolve(modality=modality, train_dataset=train_dataset, model=model,
                        imageset=imageset, subject=subject, roi=roi)
    ds = _open_dataset(cat, entry, cat.location(location, storage_options), chunks,
                       group=None, cache=cache, verify=verify, load_labels=load_labels)
    return ds[DATA_VAR]


def open_metadata(
    *,
    location: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    catalog: Catalog | None = None,
    **keys: Any,
) -> xr.Dataset:
    """Open the encoder metadata stored with an entry (training/validation/test splits).

    Takes the same keys as :func:`open`.

    Returns
    -------
    xarray.Dataset
        One variable per metadata array, e.g. ``train_img_num`` for fMRI entries.

    Examples
    --------
    >>> import nest_data
    >>> meta = nest_data.open_metadata(imageset="nsd", subject=1, roi="V1", location="demo")
    >>> "train_img_num" in meta
    True
    """
    cat = catalog or default_catalog()
    entry = cat.resolve(**keys)
    return _open_dataset(cat, entry, cat.location(location, storage_options), None,
                         group=AUX_GROUP, cache=None, verify=None, load_labels=True)


def open_many(
    *,
    imageset: str,
    subject: int | str | Sequence[int | str],
    roi: str | Sequence[str] | None = None,
    modality: str | None = None,
    train_dataset: str | None = None,
    model: str | None = None,
    location: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    chunks: Mapping[str, int] | None = None,
    cache: bool | None = None,
    verify: bool | None = None,
    catalog: Catalog | None = None,
) -> xr.DataTree:
    """Open several subjects and/or ROIs as an :class:`xarray.DataTree`.

    The tree has one node per subject (``sub-01``) and, for fMRI, one child per ROI, each
    holding a Dataset with the ``responses`` variable.  Entries keep their own voxel
    counts, so subjects and ROIs of different sizes live side by side.  Arguments are those
    of :func:`open`, with lists allowed for ``subject`` and ``roi``.

    Examples
    --------
    >>> import nest_data
    >>> tree = nest_data.open_many(imageset="nsd", subject=[1, 2], roi=["V1", "FFA-1"],
    ...                            location="demo")
    >>> sorted(tree.children)
    ['sub-01', 'sub-02']
    >>> tree["sub-02/FFA-1"].responses.dims
    ('image', 'voxel')
    """
    cat = catalog or default_catalog()
    root = cat.location(location, storage_options)
    subjects = list(subject) if isinstance(subject, (list, tuple)) else [subject]
    rois: list[str | None] = (list(roi) if isinstance(roi, (list, tuple))
                              else [roi])  # type: ignore[list-item]
    nodes: dict[str, xr.Dataset] = {}
    for s in subjects:
        for r in rois:
            entry = cat.resolve(modality=modality, train_dataset=train_dataset, model=model,
                                imageset=imageset, subject=s, roi=r)
            ds = _open_dataset(cat, entry, root, chunks, group=None, cache=cache,
                               verify=verify, load_labels=True)
            name = f"sub-{entry.subject:02d}" + (f"/{entry.roi}" if entry.roi else "")
            nodes[name] = ds[[DATA_VAR]]
    return xr.DataTree.from_dict(nodes)


def _open_dataset(
    cat: Catalog, entry: Entry, root: Root, chunks: Mapping[str, int] | None,
    group: str | None, *, cache: bool | None, verify: bool | None, load_labels: bool,
) -> xr.Dataset:
    url = root.store(entry)
    surface_roi = entry.roi if cat.model_spec(entry).surface and group is None else None
    try:
        ds = _open_url(url, root.storage_options, chunks, group, cache=cache, verify=verify,
                       load_labels=load_labels, roi=surface_roi)
    except StoreNotFoundError as exc:
        raise StoreNotFoundError(_missing_message(entry, url, root.name)) from exc
    logger.debug("opened %s from %s", entry.label, url)
    return ds


def _open_url(
    url: str, options: Mapping[str, Any], chunks: Mapping[str, int] | None, group: str | None,
    *, cache: bool | None, verify: bool | None, load_labels: bool, roi: str | None = None,
) -> xr.Dataset:
    _check_chunks(chunks)
    use_cache = _config.flag(cache, _config.ENV_CACHE) and not is_local(url)
    store = make_store(url, options, read_only=True,
                       cache=ChunkCache.shared() if use_cache else None,
                       verify=_config.flag(verify, _config.ENV_VERIFY))
    meta = read_store_attrs(store)
    store = store.with_manifest(meta.get("objects", {}), int(meta.get("chunk_rows") or 0))
    # One shard per dask task locally; several remotely, fetched concurrently, which hides
    # request latency (benchmarks/remote.py: 1.9x faster full scans at 50 ms per request).
    per_task = 1 if is_local(url) else REMOTE_CHUNKS_PER_TASK
    metadata = consolidated(store)
    reader = shard_reader(store, url, DATA_VAR, metadata) if group is None else None
    if reader is not None:
        store.n_images = reader.shape[0]  # for the images a missing object's message names
    if reader is not None and load_labels:
        ds = _dataset(store, url, metadata, reader, chunks, per_task,
                      meta.get("checksums", {}).get(DATA_VAR))
        if ds is not None:
            return ds if roi is None else _select_roi(ds, store, url, roi)
    xr_chunks = dict(chunks or {})
    if reader is not None:
        xr_chunks = {}  # labels in one chunk each; responses read through ``reader``, below
    elif chunks is None and group is None and meta.get("chunk_rows") and per_task > 1:
        xr_chunks = {"image": int(meta["chunk_rows"]) * per_task}
    with quiet_consolidated():
        ds = xr.open_zarr(store, group=group, consolidated=True, zarr_format=3,
                          chunks=xr_chunks, create_default_indexes=load_labels)
    store.n_images = int(ds.sizes.get("image", 0))
    _check_chunk_dims(chunks, ds.dims, url)
    if reader is not None:
        ds[DATA_VAR] = ds[DATA_VAR].copy(data=_responses(
            reader, ds[DATA_VAR].dims, chunks, per_task, meta.get("checksums", {}).get(DATA_VAR)))
    # Coordinates are small (one chunk each) and needed for label-based selection
    # (``da.where(da.ncsnr > 0.5)``, ``da.concept == "dog"``): read them all at once, in one
    # concurrent batch (a remote store answers them in about one round trip).
    lazy = [name for name, var in ds.coords.items() if is_dask_collection(var.data)]
    if lazy and load_labels:
        loaded = sync(_read_arrays(store, [f"{group}/{n}" if group else n for n in lazy]))
        ds = ds.assign_coords({name: (ds[name].dims, values, ds[name].attrs)
                               for name, values in zip(lazy, loaded, strict=True)})
    return ds if roi is None else _select_roi(ds, store, url, roi)


def _check_chunk_dims(chunks: Mapping[str, int] | None, dims: Iterable[Hashable],
                      url: str) -> None:
    names = [str(d) for d in dims]
    unknown = sorted(set(chunks or {}) - set(names))
    if unknown:
        raise InputError(f"chunks= names {unknown}, which are not dimensions of {url}; its "
                         f"dimensions are {', '.join(names)}")


def _responses(reader: ShardReader, dims: Sequence[Hashable],
               chunks: Mapping[str, int] | None, per_task: int, digest: str | None) -> Any:
    """``responses`` as a dask array read through ``reader``: a shard per task by default."""
    shard = reader.layout.shard
    spec = tuple((chunks or {}).get(str(dim), shard[i] * (per_task if i == 0 else 1))
                 for i, dim in enumerate(dims))
    return dask_array(reader, spec, tokenize(reader, spec, digest))


def _dataset(store: NestStore, url: str, metadata: Mapping[str, Any], reader: ShardReader,
             chunks: Mapping[str, int] | None, per_task: int, digest: str | None
             ) -> xr.Dataset | None:
    """The entry's Dataset built from its consolidated metadata, without xarray's backend.

    Labels are read in one batch (:func:`~nest_data._labels.read_labels`) and indexed like
    xarray's backend does (dimension coordinates only); None if a label's layout asks for
    zarr's general read path.
    """
    meta = metadata[DATA_VAR]
    attrs = dict(meta.get("attributes") or {})
    dims = tuple(meta.get("dimension_names") or ())
    listed = str(attrs.pop("coordinates", "")).split()
    names = [*(d for d in dims if d in metadata), *listed]
    labels = read_labels(store, url, metadata, names)
    if labels is None or len(dims) != reader.ndim:
        return None
    _check_chunk_dims(chunks, dims, url)
    coords = {name: xr.Variable(tuple(metadata[name].get("dimension_names") or ()),
                                labels[name], dict(metadata[name].get("attributes") or {}))
              for name in names}
    responses = xr.Variable(dims, _responses(reader, dims, chunks, per_task, digest), attrs)
    return xr.Dataset({DATA_VAR: responses}, coords=coords)


def _select_roi(ds: xr.Dataset, store: NestStore, url: str, roi: str) -> xr.Dataset:
    """One ROI's vertices (both hemispheres, BERG's order) of a whole-surface store."""
    if "vertex" not in ds.dims:
        raise InputError(f"{url} is not a surface store (dims {tuple(ds.dims)}), so roi={roi!r} "
                         "cannot select vertices in it; open it without roi=")
    prefix = f"{AUX_GROUP}/{ROI_AUX_PREFIX}"
    name = prefix + roi
    metadata = consolidated(store)
    if name not in metadata:
        found = sorted(k.removeprefix(prefix) for k in metadata if k.startswith(prefix))
        raise InputError(f"the surface store {url} has no vertex selection for ROI {roi!r} "
                         f"(its encoder's metadata had none); ROIs in it: "
                         f"{', '.join(found) or 'none'}. Open the whole surface without roi=, "
                         "or regenerate it from weights converted with BERG's metadata "
                         "file")
    labels = read_labels(store, url, metadata, [name])
    (positions,) = labels.values() if labels is not None else sync(_read_arrays(store, [name]))
    out = ds.isel(vertex=np.asarray(positions, dtype=np.int64))
    out[DATA_VAR].attrs["roi"] = roi
    return out


def open_store(
    url: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    chunks: Mapping[str, int] | None = None,
    cache: bool | None = None,
    verify: bool | None = None,
    load_labels: bool = True,
    roi: str | None = None,
) -> xr.DataArray:
    """Open one nest-data store by its URL, whatever catalog it belongs to.

    For stores outside the catalog's image sets, such as those ``nest-data generate`` writes
    for your own images.  The options are those of :func:`open`.

    Parameters
    ----------
    url : path or URL
        The store (a ``.zarr`` folder or an fsspec URL).
    roi : str, optional
        Surface stores: read only this ROI's vertices (both hemispheres).

    Returns
    -------
    xarray.DataArray
        ``responses``, lazy and labelled as in :func:`open`.

    Raises
    ------
    StoreNotFoundError
        No complete nest-data store at ``url``.

    Examples
    --------
    >>> import nest_data
    >>> cat = nest_data.catalog()
    >>> url = cat.location("demo").store(cat.resolve(imageset="things", subject=1, roi="V1"))
    >>> nest_data.open_store(url).dims
    ('image', 'voxel')
    """
    check_storage_options(storage_options)
    ds = _open_url(os.fspath(url), dict(storage_options or {}), chunks, None, cache=cache,
                   verify=verify, load_labels=load_labels, roi=roi)
    return ds[DATA_VAR]


def _check_chunks(chunks: Any) -> None:
    """``chunks=`` must map dimension names to positive sizes (or -1: the whole dimension)."""
    fix = ("give a dict of dimension -> chunk size, e.g. chunks={'image': 4096}; -1 keeps a "
           "dimension in one chunk; omit chunks= for the stored chunks")
    if chunks is None:
        return
    if not isinstance(chunks, Mapping):
        raise InputError(f"chunks={chunks!r} is not a dict; {fix}")
    for dim, size in chunks.items():
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or (
                size < 1 and size != -1):
            raise InputError(f"chunks={dict(chunks)!r}: the size for {dim!r} is {size!r}; "
                             + fix)


async def _read_arrays(store: NestStore, names: list[str]) -> list[np.ndarray]:
    """Read whole arrays concurrently through zarr's event loop."""
    root = await zarr.api.asynchronous.open_group(store=store, mode="r", zarr_format=3)

    async def one(name: str) -> np.ndarray:
        array = await root.getitem(name)
        if not isinstance(array, zarr.AsyncArray):
            raise StoreFormatError(f"{store}: {name} is a group where the store's metadata "
                                   "promises a label array; the store is damaged. Re-mirror "
                                   "or re-convert this entry.")
        return np.asarray(await array.getitem(Ellipsis))

    return list(await asyncio.gather(*(one(n) for n in names)))


def _missing_message(entry: Entry, url: str, location: str) -> str:
    fixes = []
    if location == "demo":
        fixes.append("run `nest-data demo` (or nest_data.build_demo()) to build the demo "
                     "collection")
    elif not is_local(url):
        fixes.append("check the location's URL and that the bucket exists")
        fixes.append("check your credentials, or for a public bucket the anonymous flag in "
                     "storage_options (anon=True for S3, token='anon' for GCS)")
        fixes.append(f"check that location {location!r} is the collection you mean "
                     "(nest_data.catalog().locations)")
    else:
        fixes.append("set NEST_DATA_ROOT (or pass location=) to the folder or URL that holds "
                     "your stores")
        fixes.append("convert NED's files there with `nest-data convert ned SRC DEST`")
        fixes.append("or try the synthetic demo: `nest-data demo`, then location='demo'")
    where = "folder" if is_local(url) else "URL"
    return (f"no store for {entry.label} at location {location!r}: looked for the {where} "
            f"{url}. To fix: " + "; ".join(fixes) + ".")
