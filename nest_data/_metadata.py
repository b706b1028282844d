"""Checking a store's metadata against its format before any value is read.

nest-data reads every array's metadata from the consolidated copy in the store's root
``zarr.json``, so that document decides how every byte is decoded: a ``data_type`` of
``int32`` where ``float32`` was written, a big-endian ``bytes`` codec, a shape or chunk grid
that does not fit the objects written would turn good bytes into plausible wrong values or
foreign errors.  :func:`check_metadata` refuses such a store first, with a
:class:`~nest_data.errors.StoreFormatError` naming what is wrong:

- the format version (a newer one is :class:`~nest_data.errors.StoreVersionError`);
- every array's data type (text: ``fixed_length_utf32``, or the variable-length ``string``
  of stores before format 4), codecs (little-endian ``bytes``, ``zstd``, ``crc32c``,
  ``blosc``, ``vlen-utf8``, ``sharding_indexed``), chunk grid and key encoding;
- one size per dimension name across arrays, and ``responses``' shards against the
  manifest: the shard rows recorded, one object listed per shard of the grid, and shards of
  at most :data:`MAX_SHARD_BYTES`;
- the SHA-256 of every node's metadata, which stores of format 3 record: any edit of any
  node's metadata, attributes included, is an error.  (Stores of formats 1 and 2 get the
  other checks only.)

The checks read nothing but the root document, so they cost microseconds per open
(``benchmarks/opening.py`` measures them).  :func:`nest_data._verify.verify_store` runs them
too, and also compares every node's own ``zarr.json`` (what zarr-python, tensorstore and
zarrs read) with the consolidated copy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from typing import Any

from nest_data._digest import bytes_digest
from nest_data._format import ATTR, DATA_VAR, FORMAT_VERSION
from nest_data._shards import layout_of
from nest_data.errors import StoreFormatError, StoreVersionError

__all__ = ["MAX_SHARD_BYTES", "check_metadata", "check_version", "is_label_layout",
           "metadata_digests", "node_digest", "type_name"]

OLDEST_FORMAT = 1  # 1: responses in one Blosc chunk per block; 2: sharded with CRC-32C
DIGESTS_FORMAT = 3  # from this format on, every node's metadata has a recorded SHA-256
MAX_SHARD_BYTES = 2**31  # nest-data writes shards of about 8 MB; no reader needs 2 GB ones
RESPONSE_TYPES = frozenset({"float16", "float32", "float64"})
LABEL_TYPES = frozenset({"bool", "int8", "int16", "int32", "int64", "uint8", "uint16",
                         "uint32", "uint64", "float16", "float32", "float64", "string",
                         "fixed_length_utf32"})
#: Text of fixed width (format 4 on): ``{"name": "fixed_length_utf32", "configuration":
#: {"length_bytes": 4 * characters}}``, read as NumPy ``<U``.
FIXED_TEXT = "fixed_length_utf32"
CODECS = frozenset({"bytes", "zstd", "crc32c", "blosc", "vlen-utf8", "sharding_indexed"})
_FIX = ("The store is damaged or was edited; re-mirror or re-convert this entry, and run "
        "`nest-data verify` on its root")


def node_digest(node: Mapping[str, Any]) -> str:
    """SHA-256 of one node's metadata document (a group's ``consolidated_metadata`` left out),
    in a canonical JSON form, so the consolidated copy and the node's own ``zarr.json`` agree.

    Examples
    --------
    >>> a = node_digest({"node_type": "array", "shape": [2], "data_type": "float32"})
    >>> a == node_digest({"data_type": "float32", "shape": [2], "node_type": "array"})
    True
    >>> a == node_digest({"node_type": "array", "shape": [2], "data_type": "int32"})
    False
    """
    doc = {k: v for k, v in node.items() if k != "consolidated_metadata"}
    return bytes_digest(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())


def metadata_digests(nodes: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """The digest (:func:`node_digest`) of every node below a store's root, by path; what
    the store records as ``metadata`` in its ``nest_data`` attribute."""
    return {path: node_digest(node) for path, node in sorted(nodes.items())}


def check_version(attrs: Mapping[str, Any], store: object) -> int:
    """The store's format version; a version this nest-data cannot read is an error.

    Raises
    ------
    StoreVersionError
        The store was written by a newer nest-data.
    StoreFormatError
        The version is not a whole number, or older than any nest-data wrote.

    Examples
    --------
    >>> check_version({"format_version": 3}, "s.zarr")
    3
    >>> check_version({"format_version": 99}, "s.zarr")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    nest_data.errors.StoreVersionError: s.zarr is in store format 99, newer than ... Upgrade...
    """
    version = attrs.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise StoreFormatError(f"{store}: its {ATTR} attribute has format_version "
                               f"{version!r}, not a whole number. {_FIX}.")
    if version > FORMAT_VERSION:
        raise StoreVersionError(
            f"{store} is in store format {version}, newer than this nest-data reads "
            f"(formats {OLDEST_FORMAT}-{FORMAT_VERSION}). Upgrade nest-data "
            "(pip install --upgrade nest-data) to read it")
    if version < OLDEST_FORMAT:
        raise StoreFormatError(f"{store} is in store format {version}, which no nest-data "
                               f"wrote (formats {OLDEST_FORMAT}-{FORMAT_VERSION}). {_FIX}.")
    return version


def check_metadata(attrs: Mapping[str, Any], nodes: Mapping[str, Any], store: object
                   ) -> None:
    """Raise unless a store's metadata is what its format allows (see the module's text).

    Parameters
    ----------
    attrs : dict
        The store's ``nest_data`` attribute (the manifest).
    nodes : dict
        The metadata of every node below the root (its consolidated metadata).
    store : object
        Names the store in messages.

    Raises
    ------
    StoreFormatError
        The first thing found wrong, named with its node and the valid values.

    Examples
    --------
    >>> node = {"node_type": "array", "shape": [3], "data_type": "float32",
    ...         "dimension_names": ["voxel"], "fill_value": 0.0,
    ...         "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [3]}},
    ...         "codecs": [{"name": "bytes", "configuration": {"endian": "big"}}]}
    >>> manifest = {"format_version": 2, "objects": {}, "checksums": {}}
    >>> check_metadata(manifest, {"ncsnr": node}, "s.zarr")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    nest_data.errors.StoreFormatError: s.zarr: ncsnr: its bytes codec is big-endian; ...
    """
    version = check_version(attrs, store)
    for field in ("objects", "checksums"):
        recorded = attrs.get(field)
        if not isinstance(recorded, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in recorded.items()):
            raise StoreFormatError(f"{store}: its manifest's {field} are not a mapping of "
                                   f"names to checksums. {_FIX}.")
    if not isinstance(nodes, Mapping) or not nodes:
        raise StoreFormatError(f"{store}: its root zarr.json holds no consolidated metadata "
                               f"of its arrays. {_FIX}.")
    _check_digests(attrs, nodes, store, version)
    sizes: dict[str, tuple[int, str]] = {}
    for path, node in sorted(nodes.items()):
        if not isinstance(node, Mapping) or node.get("node_type") not in ("array", "group"):
            raise StoreFormatError(f"{store}: {path}: its metadata is not a Zarr array or "
                                   f"group. {_FIX}.")
        if node["node_type"] == "array":
            _check_array(path, node, store, sizes)
            if path != DATA_VAR and not is_label_layout(node):
                raise StoreFormatError(f"{store}: {path}: its codecs and chunks are not the "
                                       "layout of a nest-data label (one chunk, its values "
                                       f"then zstd). {_FIX}.")
    response = nodes.get(DATA_VAR)
    if not isinstance(response, Mapping) or response.get("node_type") != "array":
        raise StoreFormatError(f"{store}: it has no {DATA_VAR} array. {_FIX}.")
    if version >= 2:
        _check_shards(attrs, response, store)


def _check_digests(attrs: Mapping[str, Any], nodes: Mapping[str, Any], store: object,
                   version: int) -> None:
    recorded = attrs.get("metadata")
    if version < DIGESTS_FORMAT:
        return  # no digests in this format: the other checks hold
    if not isinstance(recorded, Mapping):
        raise StoreFormatError(f"{store}: its recorded metadata checksums are not a mapping. "
                               f"{_FIX}.")
    for path in sorted(set(recorded) | set(nodes)):
        if path not in nodes:
            raise StoreFormatError(f"{store}: {path} is recorded in its manifest but has no "
                                   f"metadata in its root zarr.json. {_FIX}.")
        if path not in recorded:
            raise StoreFormatError(f"{store}: {path} has metadata in its root zarr.json but "
                                   f"none recorded when the store was written. {_FIX}.")
        got = node_digest(nodes[path]) if isinstance(nodes[path], Mapping) else None
        if got != recorded[path]:
            raise StoreFormatError(f"{store}: the metadata of {path} in its root zarr.json "
                                   f"does not match the checksum recorded when the store was "
                                   f"written ({got} != {recorded[path]}). {_FIX}.")


def _check_array(path: str, node: Mapping[str, Any], store: object,
                 sizes: dict[str, tuple[int, str]]) -> None:
    where = f"{store}: {path}"
    raw, chunks = node.get("shape"), _chunk_shape(node)
    if not _whole_numbers(raw, 0):
        raise StoreFormatError(f"{where}: its shape {raw!r} is not a list of sizes. {_FIX}.")
    shape: list[int] = list(raw or ())
    scalar = not shape and chunks == [1]  # a 0-d array, as zarr may record it
    if chunks is None or (len(chunks) != len(shape) and not scalar) or not _whole_numbers(
            chunks, 1):
        raise StoreFormatError(f"{where}: its chunk grid {node.get('chunk_grid')!r} is not a "
                               f"regular grid of {len(shape)} positive sizes. {_FIX}.")
    dims = node.get("dimension_names")
    if not isinstance(dims, list) or len(dims) != len(shape) or not all(
            isinstance(d, str) for d in dims):
        raise StoreFormatError(f"{where}: its dimension_names {dims!r} do not name its "
                               f"{len(shape)} axes. {_FIX}.")
    for dim, size in zip(dims, shape, strict=True):
        seen = sizes.setdefault(dim, (size, path))
        if seen[0] != size:
            raise StoreFormatError(f"{where}: dimension {dim!r} has size {size}, but "
                                   f"{seen[1]} gives it size {seen[0]}. {_FIX}.")
    dtype = node.get("data_type")
    allowed = RESPONSE_TYPES if path == DATA_VAR else LABEL_TYPES
    if type_name(dtype) not in allowed:
        text = ("" if path == DATA_VAR else " (fixed_length_utf32 with a length_bytes that "
                "is a positive multiple of 4)")
        raise StoreFormatError(f"{where}: its data type is {dtype!r}; nest-data stores hold "
                               f"{', '.join(sorted(allowed))} there{text}. {_FIX}.")
    encoding = node.get("chunk_key_encoding", {"name": "default"})
    if not isinstance(encoding, Mapping) or encoding.get("name") != "default" or (
            (encoding.get("configuration") or {}).get("separator", "/") != "/"):
        raise StoreFormatError(f"{where}: its chunk key encoding {encoding!r} is not the "
                               f"default one with '/'. {_FIX}.")
    if node.get("storage_transformers"):
        raise StoreFormatError(f"{where}: it has storage transformers, which nest-data "
                               f"stores never have. {_FIX}.")
    for codec in _codecs(node.get("codecs"), where):
        name = codec.get("name")
        if name not in CODECS:
            raise StoreFormatError(f"{where}: it uses the codec {name!r}; nest-data stores "
                                   f"use {', '.join(sorted(CODECS))}. {_FIX}.")
        endian = (codec.get("configuration") or {}).get("endian", "little")
        if name == "bytes" and endian != "little":
            raise StoreFormatError(f"{where}: its bytes codec is {endian}-endian; nest-data "
                                   f"stores hold little-endian values. {_FIX}.")


def type_name(data_type: Any) -> str | None:
    """The name of a Zarr v3 data type as nest-data stores record it, or None when it is not
    one: a plain name (``"float32"``, ``"string"``), or fixed-length UTF-32 text with a whole,
    positive number of characters.

    Examples
    --------
    >>> type_name("int64"), type_name({"name": "fixed_length_utf32",
    ...                                "configuration": {"length_bytes": 8}})
    ('int64', 'fixed_length_utf32')
    >>> type_name({"name": "fixed_length_utf32", "configuration": {"length_bytes": 6}})
    """
    if isinstance(data_type, str):
        return data_type
    if not isinstance(data_type, Mapping) or data_type.get("name") != FIXED_TEXT:
        return None
    size = (data_type.get("configuration") or {}).get("length_bytes")
    whole = isinstance(size, int) and not isinstance(size, bool) and size > 0 and size % 4 == 0
    return FIXED_TEXT if whole else None


def is_label_layout(meta: Mapping[str, Any]) -> bool:
    """Whether an array's metadata is the layout of a nest-data label: one chunk, its values
    (little-endian ``bytes``: numbers, or fixed-length UTF-32 text; or, in stores before
    format 4, ``vlen-utf8`` strings) then ``zstd``.

    Examples
    --------
    >>> meta = {"shape": [4], "data_type": "int64",
    ...         "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [4]}},
    ...         "codecs": [{"name": "bytes"}, {"name": "zstd"}]}
    >>> is_label_layout(meta), is_label_layout({**meta, "data_type": "string"})
    (True, False)
    """
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


def _check_shards(attrs: Mapping[str, Any], node: Mapping[str, Any], store: object) -> None:
    """``responses`` of a sharded store: a layout the reader knows, whose grid is the
    manifest's objects."""
    where = f"{store}: {DATA_VAR}"
    layout = layout_of(node)
    if layout is None:
        raise StoreFormatError(f"{where}: its codecs and chunk grid are not the sharded "
                               "layout of its format (inner chunks of whole rows, raw or "
                               f"Blosc values with a CRC-32C, the index at the end). {_FIX}.")
    nbytes = math.prod(layout.shard) * layout.dtype.itemsize
    if nbytes > MAX_SHARD_BYTES:
        raise StoreFormatError(f"{where}: its shards of shape {list(layout.shard)} would hold "
                               f"{nbytes / 2**20:.0f} MB; nest-data writes shards of at most "
                               f"{MAX_SHARD_BYTES // 2**20} MB. {_FIX}.")
    rows = attrs.get("chunk_rows")
    if rows and rows != layout.shard[0]:
        raise StoreFormatError(f"{where}: its shards hold {layout.shard[0]} images, but the "
                               f"manifest records {rows}. {_FIX}.")
    grid = [-(-n // c) for n, c in zip(layout.shape, layout.shard, strict=True)]
    listed = 0
    for key in _shard_keys(attrs.get("objects")):
        cell = key.split("/")[2:]
        if len(cell) != len(grid) or not all(
                c.isdigit() and int(c) < g for c, g in zip(cell, grid, strict=False)):
            raise StoreFormatError(f"{where}: the manifest lists the object {key}, which is "
                                   f"not a shard of its grid of {grid} shards. {_FIX}.")
        listed += 1
    if listed != math.prod(grid):
        raise StoreFormatError(f"{where}: its shape {list(layout.shape)} in shards of "
                               f"{list(layout.shard)} makes {math.prod(grid)} shards, but the "
                               f"manifest lists {listed}. {_FIX}.")


def _shard_keys(objects: Any) -> Iterator[str]:
    prefix = f"{DATA_VAR}/c/"
    return (key for key in (objects or {}) if isinstance(key, str) and key.startswith(prefix))


def _chunk_shape(node: Mapping[str, Any]) -> list[Any] | None:
    grid = node.get("chunk_grid")
    if not isinstance(grid, Mapping) or grid.get("name") != "regular":
        return None
    chunks = (grid.get("configuration") or {}).get("chunk_shape")
    return chunks if isinstance(chunks, list) else None


def _whole_numbers(values: Any, least: int) -> bool:
    return isinstance(values, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= least for v in values)


def _codecs(codecs: Any, where: str) -> Iterator[Mapping[str, Any]]:
    """Every codec of an array, those inside a ``sharding_indexed`` codec included."""
    if not isinstance(codecs, list) or not codecs or not all(
            isinstance(c, Mapping) for c in codecs):
        raise StoreFormatError(f"{where}: its codecs {codecs!r} are not a list of codecs. "
                               f"{_FIX}.")
    for codec in codecs:
        yield codec
        if codec.get("name") == "sharding_indexed":
            config = codec.get("configuration") or {}
            yield from _codecs(config.get("codecs"), where)
            yield from _codecs(config.get("index_codecs"), where)
