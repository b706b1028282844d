"""The metadata and labels of a nest-data store (its small coordinate arrays), read at once."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import zarr
from numcodecs import VLenUTF8, Zstd
from xarray.backends import BackendArray
from xarray.core import indexing
from zarr.core.buffer import default_buffer_prototype
from zarr.core.metadata import ArrayV3Metadata
from zarr.core.sync import sync
from zarr.storage import StorePath

from nest_data._format import consolidated_of
from nest_data._metadata import FIXED_TEXT, is_label_layout, type_name
from nest_data._storage import NestStore
from nest_data.errors import StoreFormatError

__all__ = ["consolidated", "label_dtype", "read_labels", "zarr_array"]

_ZSTD = Zstd()
_VLEN_UTF8 = VLenUTF8()


def consolidated(store: NestStore) -> dict[str, Any]:
    """The metadata of every node of a store (its consolidated ``zarr.json``), or ``{}``."""
    root = sync(store.get("zarr.json", default_buffer_prototype()))
    if root is None:
        return {}
    try:
        return consolidated_of(json.loads(root.to_bytes()))
    except ValueError:
        return {}


async def read_labels(store: NestStore, metadata: Mapping[str, Any], names: Sequence[str]
                      ) -> dict[str, Any]:
    """Whole small arrays (the labels) of a store, all requested at once.

    A label is one chunk (``bytes`` or ``vlen-utf8`` then ``zstd``), read as one object by
    the store's route (:meth:`NestStore.get_objects`: local files directly, remote ones all
    at once), checked against the SHA-256 the store's manifest records for it, and decoded
    here.  A chunk that the manifest lists and the storage lacks is
    :class:`~nest_data.errors.MissingObjectError`; one that was never written (all fill
    value) is the fill value.  Metadata of another layout is a
    :class:`~nest_data.errors.StoreFormatError` (:func:`~nest_data._metadata.check_metadata`
    refuses it when the store is opened).

    Numbers come back as NumPy arrays.  Text is NumPy ``<U`` (fixed width, which dask's
    automatic chunking can size): stores of format 4 hold it so (``fixed_length_utf32``), and
    its bytes, read now, are decompressed on first use (a lazily indexed array for xarray:
    the three text labels of 26,107 images, 7.8 MB as ``<U``, take about 10 ms, five times
    the rest of ``open``); the variable-length ``string`` of older stores is decoded into it
    now (its width is known only once decoded).
    """
    for name in names:
        if not is_label_layout(metadata[name]):
            raise StoreFormatError(f"{store}: {name}: its metadata is not the layout of a "
                                   "nest-data label (one chunk, bytes or vlen-utf8 then "
                                   "zstd); the store is damaged. Re-mirror or re-convert "
                                   "this entry.")
    keys = [f"{name}/c" + "/0" * max(1, len(metadata[name]["shape"])) for name in names]
    blobs = await store.get_objects(keys)
    return {name: (indexing.LazilyIndexedArray(_Text(store, name, metadata[name], blob))
                   if type_name(metadata[name]["data_type"]) == FIXED_TEXT
                   else _decode(store, name, metadata[name], blob))
            for name, blob in zip(names, blobs, strict=True)}


def label_dtype(meta: Mapping[str, Any]) -> np.dtype[Any] | None:
    """The NumPy dtype of a label as :func:`read_labels` returns it: ``<U`` of the stored
    width for fixed-length text, little-endian numbers; None for the variable-length
    ``string`` of stores before format 4 (its width is known once decoded).

    Examples
    --------
    >>> label_dtype({"data_type": {"name": "fixed_length_utf32",
    ...                            "configuration": {"length_bytes": 12}}})
    dtype('<U3')
    >>> label_dtype({"data_type": "int32"}).str, label_dtype({"data_type": "string"})
    ('<i4', None)
    """
    kind = type_name(meta["data_type"])
    if kind == "string":
        return None
    if kind == FIXED_TEXT:
        return np.dtype(f"<U{meta['data_type']['configuration']['length_bytes'] // 4}")
    return np.dtype(meta["data_type"]).newbyteorder("<")


def zarr_array(store: NestStore, name: str, meta: Mapping[str, Any]) -> zarr.AsyncArray[Any]:
    """The zarr array ``name`` of a store, from its consolidated metadata (no request)."""
    try:
        parsed = ArrayV3Metadata.from_dict(dict(meta))
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreFormatError(f"{store}: the metadata of {name} is not a valid Zarr v3 "
                               f"array ({exc}); the store is damaged. Re-mirror or re-convert "
                               "this entry.") from exc
    return zarr.AsyncArray(metadata=parsed, store_path=StorePath(store, name))


def _decode(store: NestStore, name: str, meta: Mapping[str, Any], blob: bytes | None
            ) -> np.ndarray:
    """The values of one label from its stored bytes (its fill value when never written);
    bytes that do not decode to the label's shape are a StoreFormatError."""
    shape = tuple(int(n) for n in meta["shape"])
    count, dtype = math.prod(shape), label_dtype(meta)
    if blob is None:
        fill = meta.get("fill_value") or ("" if dtype is None or dtype.kind == "U" else 0)
        return np.full(shape, fill, dtype=dtype)
    try:
        raw = _ZSTD.decode(blob)
        values = (np.asarray(_VLEN_UTF8.decode(raw), dtype=str) if dtype is None
                  else np.frombuffer(raw, dtype=dtype))
    except (RuntimeError, ValueError, TypeError) as exc:
        raise StoreFormatError(f"{store}: {name}: its stored bytes do not decode ({exc}); the "
                               "store is damaged. Re-mirror or re-convert this entry.") from exc
    if values.size != count:
        raise StoreFormatError(f"{store}: {name}: its stored bytes hold {values.size} values, "
                               f"but its metadata gives it shape {list(shape)} ({count} "
                               "values); the store is damaged. Re-mirror or re-convert this "
                               "entry.")
    return values.reshape(shape) if dtype is None else values.reshape(shape).copy()


class _Text(BackendArray):
    """A fixed-width text label whose stored bytes are in memory, decoded (once) when first
    indexed."""

    def __init__(self, store: NestStore, name: str, meta: Mapping[str, Any],
                 blob: bytes | None) -> None:
        self.store, self.name, self.meta, self.blob = store, name, meta, blob
        self.shape = tuple(int(n) for n in meta["shape"])
        self.dtype = label_dtype(meta)
        self._values: np.ndarray | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> _Text:
        return self  # read-only: copies share the one decoding

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(key, self.shape,
                                                  indexing.IndexingSupport.BASIC, self._get)

    def _get(self, key: tuple[Any, ...]) -> np.ndarray:
        if self._values is None:
            self._values = _decode(self.store, self.name, self.meta, self.blob)
        return self._values[key]
