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
from nest_data._metadata import is_label_layout
from nest_data._storage import NestStore
from nest_data.errors import StoreFormatError

__all__ = ["consolidated", "read_labels", "zarr_array"]

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

    Numbers come back as NumPy arrays.  Strings are read now but decoded on first use (a
    lazily indexed array for xarray): making Python strings of three labels of 26,107
    images costs 20 ms, more than the rest of ``open``.
    """
    for name in names:
        if not is_label_layout(metadata[name]):
            raise StoreFormatError(f"{store}: {name}: its metadata is not the layout of a "
                                   "nest-data label (one chunk, bytes or vlen-utf8 then "
                                   "zstd); the store is damaged. Re-mirror or re-convert "
                                   "this entry.")
    keys = [f"{name}/c" + "/0" * max(1, len(metadata[name]["shape"])) for name in names]
    blobs = await store.get_objects(keys)
    out: dict[str, Any] = {}
    for name, blob in zip(names, blobs, strict=True):
        meta = metadata[name]
        decode = _Decoding(store, name, meta, blob)
        out[name] = (indexing.LazilyIndexedArray(_Strings(decode))
                     if meta["data_type"] == "string" else decode())
    return out


def zarr_array(store: NestStore, name: str, meta: Mapping[str, Any]) -> zarr.AsyncArray[Any]:
    """The zarr array ``name`` of a store, from its consolidated metadata (no request)."""
    try:
        parsed = ArrayV3Metadata.from_dict(dict(meta))
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreFormatError(f"{store}: the metadata of {name} is not a valid Zarr v3 "
                               f"array ({exc}); the store is damaged. Re-mirror or re-convert "
                               "this entry.") from exc
    return zarr.AsyncArray(metadata=parsed, store_path=StorePath(store, name))


class _Decoding:
    """The values of one label from its stored bytes (its fill value when never written);
    bytes that do not decode to the label's shape are a StoreFormatError."""

    def __init__(self, store: NestStore, name: str, meta: Mapping[str, Any],
                 blob: bytes | None) -> None:
        self.store, self.name, self.meta, self.blob = store, name, meta, blob
        self.shape = tuple(int(n) for n in meta["shape"])

    def __call__(self) -> np.ndarray:
        meta, blob, count = self.meta, self.blob, math.prod(self.shape)
        string = meta["data_type"] == "string"
        dtype = (np.dtypes.StringDType() if string
                 else np.dtype(meta["data_type"]).newbyteorder("<"))
        if blob is None:
            return np.full(self.shape, meta.get("fill_value") or ("" if string else 0),
                           dtype=dtype)
        try:
            raw = _ZSTD.decode(blob)
            values = (np.asarray(_VLEN_UTF8.decode(raw), dtype=dtype) if string
                      else np.frombuffer(raw, dtype=dtype))
        except (RuntimeError, ValueError, TypeError) as exc:
            raise StoreFormatError(f"{self.store}: {self.name}: its stored bytes do not "
                                   f"decode ({exc}); the store is damaged. Re-mirror or "
                                   "re-convert this entry.") from exc
        if values.size != count:
            raise StoreFormatError(f"{self.store}: {self.name}: its stored bytes hold "
                                   f"{values.size} values, but its metadata gives it shape "
                                   f"{list(self.shape)} ({count} values); the store is "
                                   "damaged. Re-mirror or re-convert this entry.")
        return values.reshape(self.shape) if string else values.reshape(self.shape).copy()


class _Strings(BackendArray):
    """A string label whose bytes are in memory, decoded (once) when first indexed."""

    def __init__(self, decode: _Decoding) -> None:
        self.decode = decode
        self.shape = decode.shape
        self.dtype = np.dtypes.StringDType()
        self._values: np.ndarray | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> _Strings:
        return self  # read-only: copies share the one decoding

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(key, self.shape,
                                                  indexing.IndexingSupport.BASIC, self._get)

    def _get(self, key: tuple[Any, ...]) -> np.ndarray:
        if self._values is None:
            self._values = self.decode()
        return self._values[key]
