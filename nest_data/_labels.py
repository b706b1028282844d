"""The metadata and labels of a nest-data store (its small coordinate arrays), read at once."""

from __future__ import annotations

import asyncio
import json
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

    A label in the layout nest-data writes (one chunk, ``bytes`` or ``vlen-utf8`` then
    ``zstd``) is read as one object by the store's route (:meth:`NestStore.get_objects`:
    local files directly, remote ones all at once) and decoded here; any other (a store of
    other software) is read through zarr, concurrently with the rest.  A chunk that the
    manifest lists and the storage lacks is :class:`~nest_data.errors.MissingObjectError`;
    one that was never written (all fill value) is the fill value.

    Numbers come back as NumPy arrays.  Strings are read now but decoded on first use (a
    lazily indexed array for xarray): making Python strings of three labels of 26,107
    images costs 20 ms, more than the rest of ``open``.
    """
    ours = {name: f"{name}/c" + "/0" * len(metadata[name]["shape"]) for name in names
            if _is_label_layout(metadata[name])}
    others = [name for name in names if name not in ours]
    blobs, foreign = await asyncio.gather(
        store.get_objects(list(ours.values())),
        asyncio.gather(*(_read_through_zarr(store, name, metadata[name]) for name in others)))
    out: dict[str, Any] = dict(zip(others, foreign, strict=True))
    for name, blob in zip(ours, blobs, strict=True):
        meta = metadata[name]
        out[name] = (indexing.LazilyIndexedArray(_Strings(meta, blob))
                     if meta["data_type"] == "string" else _decode_label(meta, blob))
    return {name: out[name] for name in names}


def zarr_array(store: NestStore, name: str, meta: Mapping[str, Any]) -> zarr.AsyncArray[Any]:
    """The zarr array ``name`` of a store, from its consolidated metadata (no request)."""
    try:
        parsed = ArrayV3Metadata.from_dict(dict(meta))
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreFormatError(f"{store}: the metadata of {name} is not a valid Zarr v3 "
                               f"array ({exc}); the store is damaged. Re-mirror or re-convert "
                               "this entry.") from exc
    return zarr.AsyncArray(metadata=parsed, store_path=StorePath(store, name))


async def _read_through_zarr(store: NestStore, name: str, meta: Mapping[str, Any]
                             ) -> np.ndarray:
    return np.asarray(await zarr_array(store, name, meta).getitem(Ellipsis))


class _Strings(BackendArray):
    """A string label whose bytes are in memory, decoded (once) when first indexed."""

    def __init__(self, meta: Mapping[str, Any], blob: bytes | None) -> None:
        self.meta, self.blob = meta, blob
        self.shape = tuple(int(n) for n in meta["shape"])
        self.dtype = np.dtypes.StringDType()
        self._values: np.ndarray | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> _Strings:
        return self  # read-only: copies share the one decoding

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(key, self.shape,
                                                  indexing.IndexingSupport.BASIC, self._get)

    def _get(self, key: tuple[Any, ...]) -> np.ndarray:
        if self._values is None:
            self._values = _decode_label(self.meta, self.blob)
        return self._values[key]


def _is_label_layout(meta: Mapping[str, Any]) -> bool:
    try:
        codecs = meta["codecs"]
        names = [c["name"] for c in codecs]
        shape = list(meta["shape"])
        chunk = list(meta["chunk_grid"]["configuration"]["chunk_shape"])
        encoding = meta.get("chunk_key_encoding", {"name": "default"})
        return (names in (["bytes", "zstd"], ["vlen-utf8", "zstd"])
                and codecs[0].get("configuration", {}).get("endian", "little") == "little"
                and (chunk == shape or (not shape and chunk == [1]))
                and encoding.get("name") == "default"
                and encoding.get("configuration", {}).get("separator", "/") == "/"
                and (meta["data_type"] == "string") == (names[0] == "vlen-utf8"))
    except (KeyError, TypeError, AttributeError):
        return False


def _decode_label(meta: Mapping[str, Any], blob: bytes | None) -> np.ndarray:
    shape = tuple(int(n) for n in meta["shape"])
    if meta["data_type"] == "string":
        if blob is None:
            return np.full(shape, meta.get("fill_value") or "", dtype=np.dtypes.StringDType())
        strings = _VLEN_UTF8.decode(_ZSTD.decode(blob))
        return np.asarray(strings, dtype=np.dtypes.StringDType()).reshape(shape)
    dtype = np.dtype(meta["data_type"]).newbyteorder("<")
    if blob is None:
        return np.full(shape, meta.get("fill_value") or 0, dtype=dtype)
    out = np.empty(shape, dtype=dtype)
    _ZSTD.decode(blob, out=out)
    return out


