"""Opening entries as labelled, lazy xarray objects."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dask.array
import numpy as np
import xarray as xr
import zarr
from dask.base import tokenize
from xarray.backends import BackendArray
from xarray.core import indexing
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from nest_data import _config
from nest_data._cache import ChunkCache
from nest_data._catalog import Catalog, Entry, Root
from nest_data._catalog import catalog as default_catalog
from nest_data._catalog.keys import matches
from nest_data._dask import dask_array
from nest_data._format import AUX_GROUP, DATA_VAR, consolidated_of, root_document, store_attrs
from nest_data._labels import label_dtype, read_labels, zarr_array
from nest_data._metadata import check_metadata
from nest_data._reader import shard_reader
from nest_data._storage import NestStore, make_store
from nest_data._surface import ROI_AUX_PREFIX
from nest_data._urls import check_storage_options, is_local, local_path
from nest_data.analysis.surface import surface_space
from nest_data.errors import InputError, StoreNotFoundError

logger = logging.getLogger("nest_data")

__all__ = ["open", "open_collection", "open_many", "open_metadata", "open_store"]

#: Stored chunks per dask task for remote stores (local stores: one).
REMOTE_CHUNKS_PER_TASK = 8
#: Stores opened at once by :func:`open_many` (each sends its label requests together).
OPEN_CONCURRENCY = 16


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
    space: str | None = None,
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
    entry, root = cat.resolve_at(location, storage_options, modality=modality,
                                 train_dataset=train_dataset, model=model, imageset=imageset,
                                 subject=subject, roi=roi)
    ds = _open_dataset(cat, entry, root, chunks, group=None, cache=cache, verify=verify,
                       load_labels=load_labels)
    da = ds[DATA_VAR]
    return da if space is None else surface_space(da, space)


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
    entry, root = cat.resolve_at(location, storage_options, **keys)
    return _open_dataset(cat, entry, root, None, group=AUX_GROUP, cache=None, verify=None,
                         load_labels=True)


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

    Entries open concurrently, each in two round trips (its metadata, then all its labels),
    with at most :data:`OPEN_CONCURRENCY` stores in flight: from a bucket, opening costs
    round trips per collection, not per entry.

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
    if imageset is not None and not matches(imageset, cat.vocabulary("imageset")):
        cat = cat.at(root)  # the location's own image set: its index is read once, not per entry
    subjects = list(subject) if isinstance(subject, (list, tuple)) else [subject]
    rois: list[str | None] = (list(roi) if isinstance(roi, (list, tuple))
                              else [roi])  # type: ignore[list-item]
    entries = [cat.resolve_at(root, modality=modality, train_dataset=train_dataset,
                              model=model, imageset=imageset, subject=s, roi=r)[0]
               for s in subjects for r in rois]
    datasets = _open_entries(cat, entries, root, chunks, None, cache=cache, verify=verify,
                             load_labels=True)
    nodes = {f"sub-{e.subject:02d}" + (f"/{e.roi}" if e.roi else ""): ds[[DATA_VAR]]
             for e, ds in zip(entries, datasets, strict=True)}
    return xr.DataTree.from_dict(nodes)


def open_collection(
    *,
    location: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    chunks: Mapping[str, int] | None = None,
    cache: bool | None = None,
    verify: bool | None = None,
    catalog: Catalog | None = None,
    **keys: Any,
) -> xr.DataTree:
    """Open every store a location holds (or those matching ``keys``) as one DataTree.

    What the location holds comes from its index (one request; see
    :func:`nest_data.build_index`), or from a listing where it has none.  The stores then
    open concurrently, as in :func:`open_many`: a whole bucket of hundreds of entries opens
    in seconds.

    Parameters
    ----------
    location, storage_options, chunks, cache, verify, catalog
        As in :func:`open`.
    **keys
        Catalog keys to narrow the collection (``modality``, ``train_dataset``, ``model``,
        ``imageset``, ``subject``, ``roi``), each a value or a list.  Without ``roi``, a
        cortical-surface subject is its whole-surface store; with it, each ROI's vertices.

    Returns
    -------
    xarray.DataTree
        One leaf per entry at ``modality/train_dataset/model/imageset/sub-NN[/ROI]``, each a
        Dataset holding ``responses``.

    Raises
    ------
    StoreNotFoundError
        The location holds none of the entries asked for.

    Examples
    --------
    >>> import nest_data
    >>> tree = nest_data.open_collection(location="demo", imageset="things", subject=1)
    >>> tree["fmri/nsd/fwrf/things/sub-01/V1"].responses.dims
    ('image', 'voxel')
    >>> tree["eeg/things_eeg_2/vit_b_32/things/sub-01"].responses.dims
    ('image', 'repetition', 'channel', 'time')
    """
    cat = catalog or default_catalog()
    root = cat.location(location, storage_options)
    found = cat.search(location=root.url, storage_options=root.storage_options, **keys)
    surface = {m.name for m in cat.models if m.surface}
    entries = [e for e in found if "roi" in keys
               or e.roi is None or f"{e.modality}/{e.train_dataset}/{e.model}" not in surface]
    if not entries:
        asked = ", ".join(f"{k}={v!r}" for k, v in keys.items()) or "any entry"
        raise StoreNotFoundError(f"location {root.name!r} ({root.url}) holds no store for "
                                 f"{asked}; see what it holds with nest_data.catalog().search("
                                 f"location={root.name!r}), or `nest-data index` a root "
                                 "written before it had an index")
    datasets = _open_entries(cat, entries, root, chunks, None, cache=cache, verify=verify,
                             load_labels=True)
    return xr.DataTree.from_dict({_node(e): ds[[DATA_VAR]]
                                  for e, ds in zip(entries, datasets, strict=True)})


def _node(entry: Entry) -> str:
    """An entry's place in the tree of :func:`open_collection`."""
    return "/".join([entry.modality, entry.train_dataset, entry.model, entry.imageset,
                     f"sub-{entry.subject:02d}", *([entry.roi] if entry.roi else [])])


def _open_dataset(
    cat: Catalog, entry: Entry, root: Root, chunks: Mapping[str, int] | None,
    group: str | None, *, cache: bool | None, verify: bool | None, load_labels: bool,
) -> xr.Dataset:
    (ds,) = _open_entries(cat, [entry], root, chunks, group, cache=cache, verify=verify,
                          load_labels=load_labels)
    return ds


def _open_entries(
    cat: Catalog, entries: Sequence[Entry], root: Root, chunks: Mapping[str, int] | None,
    group: str | None, *, cache: bool | None, verify: bool | None, load_labels: bool,
) -> list[xr.Dataset]:
    """Open entries of one location, concurrently: each costs two round trips (its root
    ``zarr.json``, then all its labels at once), and at most :data:`OPEN_CONCURRENCY` are
    in flight."""
    _check_chunks(chunks)
    jobs = []
    for entry in entries:
        url = root.store(entry)
        roi = entry.roi if cat.model_spec(entry).surface and group is None else None
        store = _make_store(url, root.storage_options, cache=cache, verify=verify)
        jobs.append((entry, url, roi, _read_store(store, group, load_labels=load_labels,
                                                  roi=roi)))

    async def one(entry: Entry, url: str, read: Awaitable[_Stored]) -> _Stored:
        async with limit:
            try:
                return await read
            except StoreNotFoundError as exc:
                raise StoreNotFoundError(_missing_message(entry, url, root.name)) from exc

    async def all_of() -> list[_Stored]:
        async with asyncio.TaskGroup() as tasks:
            running = [tasks.create_task(one(entry, url, read)) for entry, url, _, read in jobs]
        return [task.result() for task in running]

    limit = asyncio.Semaphore(OPEN_CONCURRENCY)
    try:
        stored = sync(all_of())
    except ExceptionGroup as group_error:  # the first failure, as itself
        raise group_error.exceptions[0] from None
    out = []
    for (entry, url, roi, _), opened in zip(jobs, stored, strict=True):
        out.append(_dataset(opened, chunks, group, load_labels=load_labels, roi=roi))
        logger.debug("opened %s from %s", entry.label, url)
    return out


def _open_url(
    url: str, options: Mapping[str, Any], chunks: Mapping[str, int] | None, group: str | None,
    *, cache: bool | None, verify: bool | None, load_labels: bool, roi: str | None = None,
) -> xr.Dataset:
    """One store, by URL, as a Dataset (what :func:`open_store` and the ``nest`` engine
    return)."""
    _check_chunks(chunks)
    store = _make_store(url, options, cache=cache, verify=verify)
    opened = sync(_read_store(store, group, load_labels=load_labels, roi=roi))
    return _dataset(opened, chunks, group, load_labels=load_labels, roi=roi)


@dataclass
class _Stored:
    """What opening a store reads: its checked root document, then its labels."""

    store: NestStore
    attrs: dict[str, Any]  # the ``nest_data`` attribute
    metadata: dict[str, Any]  # consolidated metadata of every node
    labels: dict[str, Any]  # label name -> values (the ones read now)


def _make_store(url: str, options: Mapping[str, Any], *, cache: bool | None,
                verify: bool | None) -> NestStore:
    """The store to read ``url`` through, with the cache (remote stores only) and verify
    flags resolved (argument, then environment)."""
    use_cache = _config.flag(cache, _config.ENV_CACHE) and not is_local(url)
    return make_store(url, options, read_only=True,
                      cache=ChunkCache.shared() if use_cache else None,
                      verify=_config.flag(verify, _config.ENV_VERIFY))


async def _read_store(store: NestStore, group: str | None, *, load_labels: bool,
                      roi: str | None) -> _Stored:
    """Read a store's root ``zarr.json`` (one request), then every label at once (one more
    round trip; none without ``load_labels``, except a surface ROI's vertices)."""
    raw = await store.get("zarr.json", default_buffer_prototype())
    doc = root_document(None if raw is None else raw.to_bytes(), store)
    attrs = store_attrs(doc)
    metadata = consolidated_of(doc)
    check_metadata(attrs, metadata, store)
    store = store.with_manifest(attrs.get("objects", {}), int(attrs.get("chunk_rows") or 0))
    prefix = f"{group}/" if group else ""
    wanted = [prefix + name for name in _members(metadata, group)[0]
              if load_labels and (name != DATA_VAR or group is not None)]
    if roi is not None and ROI_AUX_PREFIX + roi in _members(metadata, AUX_GROUP)[0]:
        wanted.append(f"{AUX_GROUP}/{ROI_AUX_PREFIX}{roi}")
    labels = await read_labels(store, metadata, wanted)
    return _Stored(store, attrs, metadata, labels)


def _members(metadata: Mapping[str, Any], group: str | None) -> tuple[list[str], set[str]]:
    """The arrays directly in ``group`` (names relative to it), and which are coordinates:
    dimension names, and names an array lists in its ``coordinates`` attribute."""
    prefix = f"{group}/" if group else ""
    arrays = [key[len(prefix):] for key, meta in metadata.items()
              if key.startswith(prefix) and "/" not in key[len(prefix):]
              and isinstance(meta, Mapping) and meta.get("node_type") == "array"]
    coords: set[str] = set()
    for name in arrays:
        meta = metadata[prefix + name]
        coords.update(meta.get("dimension_names") or ())
        coords.update(str((meta.get("attributes") or {}).get("coordinates", "")).split())
    return arrays, coords & set(arrays)


def _dataset(stored: _Stored, chunks: Mapping[str, int] | None, group: str | None, *,
             load_labels: bool, roi: str | None) -> xr.Dataset:
    """The Dataset of a store's group, built from its consolidated metadata.

    ``responses`` is a dask array read through :class:`ShardReader` (through zarr for a
    layout it does not read); labels are the values read (or, without ``load_labels``,
    read on first use, with no index built).
    """
    store, metadata = stored.store, stored.metadata
    prefix = f"{group}/" if group else ""
    arrays, coord_names = _members(metadata, group)
    store.n_images = int(metadata.get(DATA_VAR, {}).get("shape", [0])[0] or 0)
    variables: dict[str, xr.Variable] = {}
    for name in arrays:
        meta = metadata[prefix + name]
        dims = tuple(meta.get("dimension_names") or ())
        attrs = {k: v for k, v in (meta.get("attributes") or {}).items() if k != "coordinates"}
        if group is None and name == DATA_VAR:
            data = _responses(store, meta, dims, chunks, stored.attrs)
        elif prefix + name in stored.labels:
            data = stored.labels[prefix + name]
        else:
            data = indexing.LazilyIndexedArray(_LazyLabel(store, prefix + name, meta))
        variables[name] = xr.Variable(dims, data, attrs)
    if group is None and DATA_VAR in variables:
        _prefer_own_chunks(variables[DATA_VAR])
    dims_seen = {str(d) for v in variables.values() for d in v.dims}
    _check_chunk_dims(chunks, sorted(dims_seen), store.url)
    coords = {n: v for n, v in variables.items() if n in coord_names}
    ds = xr.Dataset({n: v for n, v in variables.items() if n not in coord_names},
                    coords=coords if load_labels else xr.Coordinates(coords, indexes={}))
    return ds if roi is None else _select_roi(ds, stored, roi)


def _responses(store: NestStore, meta: Mapping[str, Any], dims: Sequence[Hashable],
               chunks: Mapping[str, int] | None, attrs: Mapping[str, Any]) -> Any:
    """``responses`` as a dask array: a stored shard per task locally, eight remotely
    (fetched concurrently, which hides request latency: benchmarks/remote.py measured 1.9x
    faster full scans at 50 ms per request), or the ``chunks`` asked for."""
    per_task = REMOTE_CHUNKS_PER_TASK if store.remote else 1
    stored = [int(n) for n in meta["chunk_grid"]["configuration"]["chunk_shape"]]
    spec = tuple((chunks or {}).get(str(dim), stored[i] * (per_task if i == 0 else 1))
                 for i, dim in enumerate(dims))
    digest = attrs.get("checksums", {}).get(DATA_VAR)
    reader = shard_reader(store, store.url, DATA_VAR, {DATA_VAR: meta})
    if reader is not None:
        return dask_array(reader, spec, tokenize(reader, spec, digest))
    # a layout the direct path does not read (format 1, other codecs): through zarr
    array = zarr.Array(zarr_array(store, DATA_VAR, meta))
    return dask.array.from_array(array, chunks=spec, lock=False,
                                 name=f"{DATA_VAR}-{tokenize(store, spec, digest)}")


class _LazyLabel(BackendArray):
    """A label read on first use (``load_labels=False``), then kept."""

    def __init__(self, store: NestStore, name: str, meta: Mapping[str, Any]) -> None:
        self.store, self.name, self.meta = store, name, meta
        self.shape = tuple(int(n) for n in meta["shape"])
        # the variable-length text of stores before format 4 has no width until decoded
        self.dtype = label_dtype(meta) or np.dtypes.StringDType()
        self._values: np.ndarray | None = None

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(key, self.shape,
                                                  indexing.IndexingSupport.BASIC, self._get)

    def _get(self, key: tuple[Any, ...]) -> np.ndarray:
        if self._values is None:
            labels = sync(read_labels(self.store, {self.name: self.meta}, [self.name]))
            self._values = np.asarray(labels[self.name], dtype=self.dtype)
        return self._values[key]


def _check_chunk_dims(chunks: Mapping[str, int] | None, dims: Iterable[Hashable],
                      url: str) -> None:
    names = [str(d) for d in dims]
    unknown = sorted(set(chunks or {}) - set(names))
    if unknown:
        raise InputError(f"chunks= names {unknown}, which are not dimensions of {url}; its "
                         f"dimensions are {', '.join(names)}")


def _select_roi(ds: xr.Dataset, stored: _Stored, roi: str) -> xr.Dataset:
    """One ROI's vertices (both hemispheres, BERG's order) of a whole-surface store."""
    url = stored.store.url
    if "vertex" not in ds.dims:
        raise InputError(f"{url} is not a surface store (dims {tuple(ds.dims)}), so roi={roi!r} "
                         "cannot select vertices in it; open it without roi=")
    name = f"{AUX_GROUP}/{ROI_AUX_PREFIX}{roi}"
    if name not in stored.labels:
        found = sorted(_members(stored.metadata, AUX_GROUP)[0])
        found = [n.removeprefix(ROI_AUX_PREFIX) for n in found if n.startswith(ROI_AUX_PREFIX)]
        raise InputError(f"the surface store {url} has no vertex selection for ROI {roi!r} "
                         f"(its encoder's metadata had none); ROIs in it: "
                         f"{', '.join(found) or 'none'}. Open the whole surface without roi=, "
                         "or regenerate it from weights converted with BERG's metadata "
                         "file")
    out = ds.isel(vertex=np.asarray(stored.labels[name], dtype=np.int64))
    out[DATA_VAR].attrs["roi"] = roi
    _prefer_own_chunks(out[DATA_VAR].variable)
    return out


def _prefer_own_chunks(responses: xr.Variable) -> None:
    """Record the dask chunks ``responses`` has (stored shards, one per task locally, eight
    remotely) as its ``preferred_chunks``, so that xarray's own chunking (``chunks={}``,
    ``"auto"``, :func:`xarray.open_mfdataset`) keeps them or takes whole multiples of them,
    instead of one chunk per store."""
    chunks = responses.chunks
    if chunks is not None:
        responses.encoding["preferred_chunks"] = dict(zip(responses.dims, chunks, strict=True))


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


def _missing_message(entry: Entry, url: str, location: str) -> str:
    fixes = []
    if location == "demo":
        from nest_data._demo import demo_missing_advice

        fixes.append(demo_missing_advice(entry, local_path(url.removesuffix(entry.path))))
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
