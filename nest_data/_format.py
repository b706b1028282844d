"""What a nest-data store is: its format version, names, layout and checksums.

A store is a Zarr v3 group holding one entry: the ``responses`` array (in shards of about
8 MB along ``image``, and for cortical-surface entries along ``vertex`` too, each holding
inner chunks of at most 128 KB or one image: raw values and their CRC-32C), one array per
coordinate, an ``encoder/`` sub-group with the encoder's own metadata (training splits, a
surface store's ROI vertex positions), and consolidated metadata.  The group's ``nest_data``
attribute records the entry's keys, the source fingerprint, and a SHA-256 checksum per
array (and per shard of ``responses``), which :func:`nest_data._verify.verify_store`
re-checks.  :mod:`nest_data._write` writes stores, :mod:`nest_data._staging` places them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from nest_data._storage import make_store
from nest_data.errors import StoreNotFoundError

logger = logging.getLogger("nest_data")

# 2: responses sharded, each inner chunk with a CRC-32C; 3: a SHA-256 of every node's metadata;
# 4: text labels as fixed-length UTF-32 (Zarr's ``fixed_length_utf32``, NumPy's ``<U``), not
# variable-length ``string``, so that xarray's and dask's automatic chunking can size them
FORMAT_VERSION = 4
ATTR = "nest_data"
DATA_VAR = "responses"
AUX_GROUP = "encoder"
TARGET_CHUNK_BYTES = 8 * 2**20  # design: 4-16 MB per chunk (a shard: one stored object)
INNER_CHUNK_BYTES = 128 * 2**10  # the least a selection of one image reads (and checks)
ZSTD_LEVEL = 3  # coordinates and metadata arrays


def inner_rows(shard_rows: int, row_nbytes: int, target: int | None = None) -> int:
    """Images per inner chunk of a shard: the largest divisor of ``shard_rows`` within target.

    Examples
    --------
    >>> inner_rows(1560, 1350 * 4)
    24
    >>> inner_rows(268, 7799 * 4)
    4
    >>> inner_rows(4, 1350 * 4)
    4
    """
    most = max(1, (target or INNER_CHUNK_BYTES) // max(row_nbytes, 1))
    return max(d for d in range(1, min(most, shard_rows) + 1) if shard_rows % d == 0)


@dataclass
class EntryData:
    """Everything :func:`write_entry` needs to write one entry.

    Parameters
    ----------
    dims : tuple of str
        Dimension names of ``responses``; the first is ``image``.
    shape : tuple of int
        Shape of ``responses``.
    read_rows : callable
        ``read_rows(start, stop)`` returns rows ``start:stop`` of ``responses`` as a float32
        array; it is called once per chunk, in order, so sources are streamed.
    coords : dict
        Coordinate name -> ``(dims, values, attrs)``.
    attrs : dict
        Attributes of ``responses`` (entry keys, units, affine, provenance...).
    keys : dict
        The catalog key of the entry (modality, train_dataset, model, imageset, subject, roi).
    aux : dict
        Arrays for the ``encoder/`` sub-group (training splits, NSD design): name -> array.
    fingerprint : dict
        Identifies the source (file names, sizes, mtimes); a store whose fingerprint matches
        is not rewritten on resume.
    chunks : tuple of int, optional
        Chunk shape of ``responses`` after the ``image`` axis (surface entries chunk
        ``vertex`` too); default: whole rows, so chunks run along ``image`` only.
    """

    dims: tuple[str, ...]
    shape: tuple[int, ...]
    read_rows: Callable[[int, int], np.ndarray]
    coords: dict[str, tuple[tuple[str, ...], np.ndarray, dict[str, Any]]]
    attrs: dict[str, Any]
    keys: dict[str, Any]
    aux: dict[str, np.ndarray] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"
    chunks: tuple[int, ...] | None = None


def chunk_rows(row_nbytes: int, n_rows: int, target: int = TARGET_CHUNK_BYTES) -> int:
    """Images per shard of ``responses``: about ``target`` bytes, whole inner chunks.

    Examples
    --------
    >>> chunk_rows(1350 * 4, 73000)
    1560
    >>> chunk_rows(7799 * 4, 26107)
    268
    """
    rows = int(max(1, min(n_rows, round(target / max(row_nbytes, 1)))))
    inner = max(1, min(rows, INNER_CHUNK_BYTES // max(row_nbytes, 1)))
    return max(inner, round(rows / inner) * inner)


def array_digest(values: np.ndarray) -> str:
    """SHA-256 of an array's values (C order; strings as UTF-8 joined by US characters).

    Examples
    --------
    >>> array_digest(np.zeros(3, "float32"))[:12]
    'sha256:15ec7'
    """
    h = hashlib.sha256()
    _update_digest(h, values)
    return "sha256:" + h.hexdigest()


def _update_digest(h: Any, values: np.ndarray) -> None:
    values = np.asarray(values)
    if values.dtype.kind in "biufc":
        h.update(np.ascontiguousarray(values).data)
    else:
        h.update("\x1f".join(str(v) for v in values.ravel()).encode("utf-8"))
        h.update(b"\x1e")


def read_store_attrs(store: Any) -> dict[str, Any]:
    """Return the ``nest_data`` attribute of a store, or raise StoreNotFoundError.

    Reads the root ``zarr.json`` only (one request).  ``store`` is a Zarr store, or a local
    folder or URL.
    """
    if not isinstance(store, Store):
        store = make_store(store)
    try:
        root = sync(store.get("zarr.json", default_buffer_prototype()))
    except FileNotFoundError as exc:  # a local root folder that does not exist
        raise StoreNotFoundError(f"no nest-data store at {store}") from exc
    return store_attrs(root_document(None if root is None else root.to_bytes(), store))


def root_document(raw: bytes | None, store: Any) -> dict[str, Any]:
    """The parsed root ``zarr.json`` of a complete nest-data store, or StoreNotFoundError.

    ``raw`` is its bytes (None: there is none); ``store`` names the store in messages.
    """
    if raw is None:
        raise StoreNotFoundError(f"no nest-data store at {store}")
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise StoreNotFoundError(f"{store}: its zarr.json is not JSON, so it is not a "
                                 "nest-data store") from exc
    meta = doc.get("attributes", {}).get(ATTR) if isinstance(doc, Mapping) else None
    if doc.get("node_type") != "group" or not isinstance(meta, Mapping) or not meta.get(
            "complete"):
        raise StoreNotFoundError(f"{store} is a Zarr node but not a complete nest-data store")
    return dict(doc)


def store_attrs(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The ``nest_data`` attribute of a root document checked by :func:`root_document`."""
    return dict(doc["attributes"][ATTR])


def consolidated_of(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata of every node below a root document (its consolidated metadata), or
    ``{}``."""
    try:
        return dict(doc["consolidated_metadata"]["metadata"])
    except (KeyError, TypeError, ValueError):
        return {}
