"""The one writer of nest-data stores: :func:`write_entry` and the pieces generators share.

Every writer of stores in the package (the NED converter, the demo, encoder-generated
stores) goes through :func:`write_entry` (or its stages, :func:`begin_stage`,
:func:`write_rows` and :func:`finish_stage`), inside :func:`nest_data._staging.staging`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.api.asynchronous
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.errors import UnstableSpecificationWarning
from zarr.storage import MemoryStore

from nest_data._format import (
    ATTR,
    AUX_GROUP,
    DATA_VAR,
    FORMAT_VERSION,
    TARGET_CHUNK_BYTES,
    ZSTD_LEVEL,
    EntryData,
    array_digest,
    chunk_rows,
    inner_rows,
)
from nest_data._metadata import metadata_digests
from nest_data._shards import encode_shard, layout_of
from nest_data._staging import commit, object_digests, staging
from nest_data._storage import quiet_consolidated
from nest_data._urls import join
from nest_data.errors import InputError

logger = logging.getLogger("nest_data")


def response_codecs(dtype: Any) -> tuple[Crc32cCodec]:
    """Codecs of each inner chunk of ``responses``: the raw values, then their CRC-32C.

    Encoder outputs are float32 noise to a compressor: Blosc LZ4 with byte shuffle saves 8%
    of the bytes and costs a quarter of the speed of a local scan (``benchmarks/codecs.py``),
    so the values are stored as they are.  The CRC-32C (4 bytes per inner chunk) is checked on
    every read, whether or not ``verify`` is on, so a flipped or truncated byte is an error,
    never a plausible value.  (:mod:`nest_data._reader` also reads Blosc inner chunks.)
    """
    del dtype  # raw little-endian values of any dtype
    return (Crc32cCodec(),)


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def write_entry(
    data: EntryData,
    root: str | os.PathLike[str],
    path: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    chunk_bytes: int = TARGET_CHUNK_BYTES,
) -> dict[str, Any]:
    """Write one entry as a Zarr v3 store at ``root/path``, atomically.

    Rows are read through ``data.read_rows`` one chunk at a time, so memory stays bounded
    by a few chunks whatever the size of the source.

    Parameters
    ----------
    data : EntryData
        The entry's values and metadata.
    root : str or path-like
        Folder or fsspec URL (``s3://``, ``gs://``...) that holds the collection.
    path : str
        Path of the entry's store inside ``root`` (from the catalog's path template).
    storage_options : dict, optional
        fsspec options for a remote ``root``.
    chunk_bytes : int
        Target uncompressed size of one chunk of ``responses``.

    Returns
    -------
    dict
        The ``nest_data`` attribute written to the group (keys, fingerprint, a SHA-256 of
        every array's values and of every stored object).
    """
    rows = chunk_rows(row_nbytes(data), data.shape[0], chunk_bytes)
    with staging(root, path) as stage:
        memory = begin_stage(data, stage, rows)
        digest, nan_count = _stream_rows(data, stage, rows)
        meta = finish_stage(memory, stage, data, rows, digest, nan_count)
        commit(stage, root, path, storage_options)
    logger.debug("wrote %s (%d objects, chunks of %d images)", join(root, path),
                 len(meta["objects"]), rows)
    return meta


def row_nbytes(data: EntryData) -> int:
    """Bytes of one image's responses inside one chunk (a whole row unless chunked further)."""
    return (int(np.prod(data.chunks or data.shape[1:], dtype=np.int64))
            * np.dtype(data.dtype).itemsize)


def begin_stage(data: EntryData, stage: Path, rows: int) -> MemoryStore:
    """Write every array of the store but the values of ``responses`` into ``stage``.

    Returns the in-memory skeleton that :func:`finish_stage` completes.  Writing the
    skeleton again into a stage that already holds chunks leaves them alone.
    """
    memory = _skeleton(data, rows)
    sync(_dump(memory, stage))
    return memory


def finish_stage(memory: MemoryStore, stage: Path, data: EntryData, rows: int,
                 response_digest: str, nan_count: int) -> dict[str, Any]:
    """Record the checksums of a staged store whose ``responses`` are all written.

    Returns the ``nest_data`` attribute written (the stage is then ready for :func:`commit`).
    """
    checksums: dict[str, str] = {name: array_digest(np.asarray(values))
                                 for name, (_, values, _) in data.coords.items()}
    checksums[DATA_VAR] = response_digest
    for name, values in data.aux.items():
        checksums[f"{AUX_GROUP}/{name}"] = array_digest(values)
    meta = {
        "format_version": FORMAT_VERSION,
        "keys": data.keys,
        "fingerprint": data.fingerprint,
        "checksums": dict(sorted(checksums.items())),
        "objects": object_digests(stage),
        "chunk_rows": rows,
        "complete": True,
    }
    with _quiet_fixed_text():
        sync(_finish(memory, meta, {"sha256": response_digest, "nan_count": nan_count}))
    sync(_dump(memory, stage, metadata_only=True))
    return meta


def scan_rows(array: zarr.Array, rows: int) -> tuple[str, int]:
    """SHA-256 of an array's values (as :func:`array_digest`) and its NaN count, by chunks."""
    return _digest_blocks(np.asarray(array[start:start + rows])
                          for start in range(0, array.shape[0], rows))


def _digest_blocks(blocks: Iterable[np.ndarray]) -> tuple[str, int]:
    """SHA-256 of consecutive blocks of rows (as one array) and their number of NaNs."""
    whole = hashlib.sha256()
    nan_count = 0
    for block in blocks:
        block = np.ascontiguousarray(block)
        whole.update(block.data)
        nan_count += int(np.count_nonzero(np.isnan(block)))
    return "sha256:" + whole.hexdigest(), nan_count


def _skeleton(data: EntryData, rows: int) -> MemoryStore:
    """Create every array of the store concurrently, in memory; fill all but ``responses``.

    The layout is the one xarray reads: ``dimension_names`` on each array and a
    ``coordinates`` attribute on ``responses`` naming its non-dimension coordinates.
    """
    # Sorted names: the bytes written must not depend on the order the caller's dicts have
    # (safetensors, for one, returns tensors in an order that changes from run to run).
    coord_names = sorted(n for n in data.coords if n not in data.dims)
    specs: list[tuple[str, tuple[str, ...], np.ndarray | None, dict[str, Any]]] = [
        (name, *data.coords[name]) for name in sorted(data.coords)]
    specs += [(f"{AUX_GROUP}/{name}", _aux_dims(name, data.aux[name]), data.aux[name], {})
              for name in sorted(data.aux)]
    response_attrs = {**data.attrs, "coordinates": " ".join(coord_names)}
    # Small arrays are encoded in memory and written out in one pass (creating ~20 arrays
    # directly on disk takes twice as long), and the metadata is consolidated there too.
    memory = MemoryStore()
    with _quiet_fixed_text():
        sync(_create_arrays(memory, specs, data, rows, response_attrs))
    return memory


@contextlib.contextmanager
def _quiet_fixed_text() -> Iterator[None]:
    """Silence zarr-python's warning on writing the metadata of fixed-length UTF-32 text.

    It warns each time such metadata is written: the data type is specified in
    zarr-extensions (``fixed-length-utf32``), not in the core specification; zarr-python,
    zarrs and xarray read it as NumPy ``<U``.  The note is not for users.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnstableSpecificationWarning)
        yield


async def _finish(memory: MemoryStore, meta: dict[str, Any], response_attrs: dict[str, Any]
                  ) -> None:
    """Record checksums and consolidate the metadata (all in memory)."""
    root = await zarr.api.asynchronous.open_group(store=memory, mode="r+", zarr_format=3)
    responses = await root.getitem(DATA_VAR)
    await responses.update_attributes(response_attrs)
    meta["metadata"] = metadata_digests(await _nodes(memory))
    await root.update_attributes({ATTR: meta})
    with quiet_consolidated():
        await zarr.api.asynchronous.consolidate_metadata(memory)


async def _nodes(memory: MemoryStore) -> dict[str, Any]:
    """The metadata document of every node below the root of an in-memory store."""
    out = {}
    async for key in memory.list_prefix(""):
        if key.endswith("/zarr.json"):
            buffer = await memory.get(key, default_buffer_prototype())
            if buffer is not None:
                out[key.removesuffix("/zarr.json")] = json.loads(buffer.to_bytes())
    return out


async def _dump(memory: MemoryStore, folder: Path, *, metadata_only: bool = False) -> None:
    """Write the memory store's objects as files under ``folder``."""
    async for key in memory.list():
        if metadata_only and not key.endswith("zarr.json"):
            continue
        buffer = await memory.get(key, default_buffer_prototype())
        if buffer is None:  # listed, so present: the memory store is ours alone
            raise RuntimeError(f"object {key} vanished from the in-memory staging store")
        target = folder / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(buffer.to_bytes())


async def _create_arrays(
    store: MemoryStore,
    specs: list[tuple[str, tuple[str, ...], np.ndarray | None, dict[str, Any]]],
    data: EntryData, rows: int, response_attrs: dict[str, Any],
) -> None:
    root = await zarr.api.asynchronous.open_group(store=store, mode="w-", zarr_format=3)
    if data.aux:
        await root.create_group(AUX_GROUP)
    zstd = (ZstdCodec(level=ZSTD_LEVEL),)

    async def coord(name: str, dims: tuple[str, ...], values: np.ndarray | None,
                    attrs: dict[str, Any]) -> None:
        values = _portable(np.asarray(values))
        array = await root.create_array(
            name, shape=values.shape, dtype=values.dtype, chunks=values.shape or (1,),
            compressors=zstd, dimension_names=dims, attributes=attrs,
            fill_value="" if values.dtype.kind == "U" else None)
        await array.setitem(Ellipsis, values)

    await asyncio.gather(
        root.create_array(DATA_VAR, shape=data.shape, dtype=data.dtype,
                          shards=(rows, *(data.chunks or data.shape[1:])),
                          chunks=(inner_rows(rows, row_nbytes(data)),
                                  *(data.chunks or data.shape[1:])),
                          compressors=response_codecs(data.dtype),
                          dimension_names=data.dims, attributes=response_attrs,
                          fill_value=np.nan),
        *(coord(*spec) for spec in specs),
    )


def _portable(values: np.ndarray) -> np.ndarray:
    """Text as fixed-length UTF-32 (NumPy ``<U``, Zarr's ``fixed_length_utf32``), others
    unchanged.

    Zarr's variable-length ``string`` reads back as NumPy's ``StringDType``, which dask cannot
    size, so ``chunks="auto"`` (xarray's, intake-esm's default) fails on it; fixed-width text
    it can.  A string ending in NUL characters would lose them in ``<U`` and is refused.

    Examples
    --------
    >>> _portable(np.array(["lh", "rh"], dtype=object)).dtype
    dtype('<U2')
    """
    values = np.asarray(values)
    if values.dtype.kind not in "OTSU":
        return values
    if values.dtype.kind == "S":
        values = np.char.decode(values, "utf-8")
    if values.dtype.kind in "OT":
        for value in values.ravel():
            if not isinstance(value, str) or value.endswith("\x00"):
                raise InputError(f"a text label holds {value!r}: labels of text must be "
                                 "strings, none ending in a NUL character ('\\x00', which "
                                 "fixed-width text drops); convert or strip them before "
                                 "writing")
        values = values.astype(str)
    return values


def _aux_dims(name: str, values: np.ndarray) -> tuple[str, ...]:
    if values.ndim == 1:
        return (f"{name}_index",)
    return tuple(f"{name}_dim{axis}" for axis in range(values.ndim))


def _stream_rows(data: EntryData, stage: Path, rows: int) -> tuple[str, int]:
    """Copy all rows shard by shard; return the values' SHA-256 and their number of NaNs."""
    n = data.shape[0]

    def written() -> Iterator[np.ndarray]:
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            block = np.ascontiguousarray(data.read_rows(start, stop), dtype=data.dtype)
            expected = (stop - start, *data.shape[1:])
            if block.shape != expected:
                raise ValueError(f"read_rows({start}, {stop}) returned shape "
                                 f"{block.shape}, expected {expected}")
            write_rows(stage, start, block)
            yield block

    return _digest_blocks(written())


def write_rows(stage: Path, start: int, values: np.ndarray) -> None:
    """Write ``values`` as rows ``start...`` of a staged store's ``responses``, whole shards.

    Each shard object of the raw layout is encoded directly
    (:func:`~nest_data._shards.encode_shard`, the bytes zarr would write; zarr-python spends
    about 0.4 ms on each inner chunk it encodes); other layouts are written through zarr.
    ``start`` is the first row of a shard, and ``values`` ends on a shard boundary or at
    the array's end.  Every shard is written, even one holding only NaN.
    """
    layout = layout_of(json.loads((stage / DATA_VAR / "zarr.json").read_text()))
    end = start + values.shape[0]
    if layout is None or layout.compressed:  # other codecs: zarr encodes them
        with zarr.config.set({"array.write_empty_chunks": True}):
            zarr.open_array(stage, path=DATA_VAR, mode="r+", zarr_format=3)[start:end] = values
        return
    shard = layout.shard
    if start % shard[0] or (end % shard[0] and end != layout.shape[0]):
        raise ValueError(f"rows {start}-{end} are not whole shards of {shard[0]} images")
    grid = [range(-(-n // c)) for n, c in zip(layout.shape[1:], shard[1:], strict=True)]
    for lo in range(start, end, shard[0]):
        rows = min(lo + shard[0], end) - lo
        for cell in itertools.product(*grid):
            part = values[(slice(lo - start, lo - start + rows),
                           *(slice(j * c, (j + 1) * c) for j, c in zip(cell, shard[1:],
                                                                         strict=True)))]
            block = part
            if part.shape != shard:  # the array's edge: zarr pads with the fill value
                block = np.full(shard, layout.fill_value, dtype=layout.dtype)
                block[tuple(slice(0, k) for k in part.shape)] = part
            path = stage.joinpath(DATA_VAR, "c", str(lo // shard[0]), *map(str, cell))
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as f:
                f.write(encode_shard(layout, block, rows).data)
