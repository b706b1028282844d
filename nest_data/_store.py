"""The one writer and reader of nest-data stores.

A store is a Zarr v3 group holding one entry: the ``responses`` array (in shards of about
8 MB along ``image``, and for cortical-surface entries along ``vertex`` too, each holding
inner chunks of at most 128 KB or one image: raw values and their CRC-32C), one array per
coordinate, an ``encoder/`` sub-group with the encoder's own metadata (training splits, a
surface store's ROI vertex positions), and consolidated metadata.  The group's ``nest_data``
attribute records the entry's keys, the source fingerprint, and a SHA-256 checksum per
array (and per shard of ``responses``), which :func:`verify_store` re-checks.

Every writer of stores in the package (the NED converter, the demo, encoder-generated
stores) goes through :func:`write_entry`, which builds the store in a hidden staging folder
and renames it into place only when complete, so a reader never sees half a store.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import zarr
import zarr.api.asynchronous
from zarr.abc.store import Store
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore, MemoryStore

from nest_data import _config
from nest_data._digest import bytes_digest, file_digest
from nest_data._shards import encode_shard, layout_of
from nest_data._storage import is_local, join, local_path, make_store, quiet_consolidated
from nest_data.errors import StoreNotFoundError, TargetExistsError

logger = logging.getLogger("nest_data")

FORMAT_VERSION = 2  # 2: responses sharded, each inner chunk with a CRC-32C
ATTR = "nest_data"
DATA_VAR = "responses"
AUX_GROUP = "encoder"
STAGING_DIR = ".nest-data-staging"
TARGET_CHUNK_BYTES = 8 * 2**20  # design: 4-16 MB per chunk (a shard: one stored object)
INNER_CHUNK_BYTES = 128 * 2**10  # the least a selection of one image reads (and checks)
ZSTD_LEVEL = 3  # coordinates and metadata arrays


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

__all__ = [
    "DATA_VAR",
    "EntryData",
    "array_digest",
    "begin_stage",
    "check_replaceable",
    "chunk_rows",
    "commit",
    "finish_stage",
    "make_root",
    "object_digests",
    "read_store_attrs",
    "row_nbytes",
    "scan_rows",
    "staging",
    "store_exists",
    "verify_store",
    "write_entry",
]


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


# --------------------------------------------------------------------------------------
# Paths and atomic commit (local file systems; remote targets come with remote support)
# --------------------------------------------------------------------------------------


def store_exists(root: str | os.PathLike[str], path: str,
                 storage_options: Mapping[str, Any] | None = None) -> bool:
    """Whether a committed store (its root ``zarr.json``) exists at ``root/path``."""
    url = join(root, path)
    if is_local(url):
        return (Path(local_path(url)) / "zarr.json").is_file()
    fs, base = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    return bool(fs.exists(f"{base}/zarr.json"))


def _staging_parent(root: str | os.PathLike[str]) -> Path:
    """Local folder where stores are built: inside a local root, else in the cache dir."""
    if is_local(root):
        return Path(local_path(root)) / STAGING_DIR
    return _config.cache_dir() / "staging"


@contextlib.contextmanager
def staging(root: str | os.PathLike[str], path: str) -> Iterator[Path]:
    """Yield a fresh local staging folder for one store; remove it when done or failed."""
    stage = _staging_parent(root) / f"{uuid.uuid4().hex}-{Path(path).name}"
    stage.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def commit(stage: Path, root: str | os.PathLike[str], path: str,
           storage_options: Mapping[str, Any] | None = None, *, last: str = "zarr.json"
           ) -> None:
    """Make a complete staging folder the folder at ``root/path``, never half-visible.

    Local roots: one rename (an older folder is moved aside first, then deleted).  Remote
    roots (no rename there): the old ``last`` file (the store's root ``zarr.json``) is
    deleted, which hides the old folder from readers; every other object is uploaded; the
    ``last`` file, whose presence makes the folder exist for readers, goes last.
    """
    url = join(root, path)
    if is_local(url):
        final = Path(local_path(url))
        final.parent.mkdir(parents=True, exist_ok=True)
        old = None
        check_replaceable(root, path)
        if final.exists():
            old = _staging_parent(root) / f"{uuid.uuid4().hex}-old-{final.name}"
            os.replace(final, old)
        os.replace(stage, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return
    check_replaceable(root, path, storage_options)
    fs, base = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    if fs.exists(f"{base}/{last}"):
        fs.rm_file(f"{base}/{last}")
    files = sorted(p for p in stage.rglob("*") if p.is_file() and p != stage / last)
    if files:
        fs.put([str(p) for p in files],
               [f"{base}/{p.relative_to(stage).as_posix()}" for p in files])
    fs.put_file(str(stage / last), f"{base}/{last}")


def make_root(root: str | os.PathLike[str]) -> None:
    """Create a local collection root (a remote one needs nothing); refuse a file or worse.

    Raises
    ------
    TargetExistsError
        ``root`` is a file, or a folder that cannot be created (a read-only or virtual file
        system such as ``/proc``).
    """
    text = os.fspath(root)
    if not is_local(text):
        return
    folder = Path(local_path(text))
    if folder.exists() and not folder.is_dir():
        raise TargetExistsError(f"the destination {folder} is a file, not a folder; give a "
                                "folder (it is created if missing) to hold the stores")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".nest-data-probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise TargetExistsError(f"cannot write in the destination {folder} ({exc}); give a "
                                "folder you can write to") from exc


def check_replaceable(root: str | os.PathLike[str], path: str,
                      storage_options: Mapping[str, Any] | None = None) -> None:
    """Raise unless ``root/path`` is free or holds a store or weights folder nest-data wrote.

    Whatever is there is about to be replaced; nest-data never deletes or overwrites anything
    it did not write (a user's folder or file, a foreign Zarr group).

    Raises
    ------
    TargetExistsError
        Something else is at ``root/path``; the message says what and how to proceed.
    """
    url = join(root, path)
    if is_local(url):
        final = Path(local_path(url))
        if final.exists() or final.is_symlink():
            _refuse_unless_ours(url, final.is_dir() and not final.is_symlink(),
                                lambda name: (final / name).read_bytes()
                                if (final / name).is_file() else None)
        return
    fs, base = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    if fs.exists(base):
        _refuse_unless_ours(url, fs.isdir(base), lambda name: fs.cat_file(f"{base}/{name}")
                            if fs.exists(f"{base}/{name}") else None)


def _refuse_unless_ours(url: str, is_dir: bool, read: Callable[[str], bytes | None]) -> None:
    if is_dir:
        for name, key in (("zarr.json", ATTR), ("model.json", "format")):
            try:
                raw = read(name)
                doc = json.loads(raw) if raw is not None else None
            except (OSError, ValueError):
                doc = None
            if not isinstance(doc, dict):
                continue
            if name == "zarr.json" and isinstance(doc.get("attributes"), dict) and (
                    key in doc["attributes"]):
                return
            if name == "model.json" and str(doc.get(key, "")).startswith("nest-data "):
                return
    what = "a folder that is not a nest-data store" if is_dir else "a file"
    raise TargetExistsError(
        f"{url} exists and is {what}; nest-data replaces only stores and weights folders it "
        "wrote itself and never deletes anything else. Move it away, or write to another "
        "destination.")


def clean_staging(root: str | os.PathLike[str]) -> int:
    """Remove staging folders left by interrupted writes under a local root; return how many."""
    if not is_local(root):
        return 0
    removed = 0
    for stage in Path(local_path(root)).rglob(STAGING_DIR):
        if stage.is_dir():
            removed += sum(1 for _ in stage.iterdir())
            shutil.rmtree(stage, ignore_errors=True)
    return removed


def object_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every object of a store folder except the metadata (``zarr.json``) files."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != "zarr.json":
            out[path.relative_to(folder).as_posix()] = (
                file_digest(path))
    return out


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
    sync(_create_arrays(memory, specs, data, rows, response_attrs))
    return memory


async def _finish(memory: MemoryStore, meta: dict[str, Any], response_attrs: dict[str, Any]
                  ) -> None:
    """Record checksums and consolidate the metadata (all in memory)."""
    root = await zarr.api.asynchronous.open_group(store=memory, mode="r+", zarr_format=3)
    responses = await root.getitem(DATA_VAR)
    await responses.update_attributes(response_attrs)
    await root.update_attributes({ATTR: meta})
    with quiet_consolidated():
        await zarr.api.asynchronous.consolidate_metadata(memory)


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
        dtype: Any = str if values.dtype == object else values.dtype
        array = await root.create_array(
            name, shape=values.shape, dtype=dtype, chunks=values.shape or (1,),
            compressors=zstd, dimension_names=dims, attributes=attrs,
            fill_value="" if dtype is str else None)
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
    """Strings as variable-length UTF-8 (the Zarr v3 ``string`` type), others unchanged."""
    values = np.asarray(values)
    return values.astype(object) if values.dtype.kind in "US" else values


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


# --------------------------------------------------------------------------------------
# Reading back
# --------------------------------------------------------------------------------------


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
    if root is None:
        raise StoreNotFoundError(f"no nest-data store at {store}")
    try:
        doc = json.loads(root.to_bytes())
    except ValueError as exc:
        raise StoreNotFoundError(f"{store}: its zarr.json is not JSON, so it is not a "
                                 "nest-data store") from exc
    meta = doc.get("attributes", {}).get(ATTR) if isinstance(doc, Mapping) else None
    if doc.get("node_type") != "group" or not isinstance(meta, Mapping) or not meta.get(
            "complete"):
        raise StoreNotFoundError(f"{store} is a Zarr node but not a complete nest-data store")
    return dict(meta)


@dataclass
class Problem:
    """One checksum mismatch found by :func:`verify_store`."""

    store: str
    array: str
    detail: str

    def __str__(self) -> str:
        return f"{self.store}: {self.array}: {self.detail}"


def verify_store(store: Any, *, label: str | None = None) -> list[Problem]:
    """Re-read a store and compare it with the checksums recorded when it was written.

    Every object (chunk) is checked against its SHA-256, and every array whose objects all
    match is decoded and checked against the SHA-256 of its values.

    Parameters
    ----------
    store : zarr store or path
        The entry's store.
    label : str, optional
        How to name the store in problems (defaults to ``str(store)``).

    Returns
    -------
    list of Problem
        Empty when every object and array matches; otherwise one per mismatch, naming the
        object (e.g. ``responses/c/3/0``, images 807-1075) or the array.
    """
    name = label or str(store)
    meta = read_store_attrs(store)
    rows = int(meta.get("chunk_rows", 0))
    with quiet_consolidated():
        group = zarr.open_group(store, mode="r", zarr_format=3)
    responses = group.get(DATA_VAR)
    n_images = int(responses.shape[0]) if isinstance(responses, zarr.Array) else 0
    problems: list[Problem] = []
    damaged: set[str] = set()
    for key, got in sync(_object_digests(store, list(meta["objects"]))).items():
        recorded = meta["objects"][key]
        if got == recorded:
            continue
        array = key.split("/c/", 1)[0] if "/c/" in key else key.rsplit("/c", 1)[0]
        damaged.add(array)
        where = ""
        if array == DATA_VAR and rows:
            start = int(key.split("/c/", 1)[1].split("/")[0]) * rows
            where = f" (images {start}-{min(start + rows, n_images) - 1})"
        detail = "is missing" if got is None else f"has checksum {got}, recorded {recorded}"
        problems.append(Problem(name, array, f"object {key}{where} {detail}"))
    for array_name, expected in meta["checksums"].items():
        if array_name in damaged:
            continue
        try:
            got_values = array_digest(np.asarray(group[array_name][...]))  # type: ignore[index]
        except Exception as exc:  # undecodable bytes, missing array
            problems.append(Problem(name, array_name, f"cannot be read ({exc})"))
            continue
        if got_values != expected:
            problems.append(Problem(name, array_name,
                                    f"values checksum {got_values} != recorded {expected}"))
    return problems


async def _object_digests(store: Any, keys: list[str]) -> dict[str, str | None]:
    """SHA-256 of the raw bytes of each object (None when missing), read concurrently."""
    if not isinstance(store, Store):
        store = LocalStore(os.fspath(store), read_only=True)
    prototype = default_buffer_prototype()
    semaphore = asyncio.Semaphore(16)

    async def one(key: str) -> str | None:
        async with semaphore:
            buffer = await store.get(key, prototype)
        return None if buffer is None else (
            bytes_digest(buffer.to_bytes()))

    return dict(zip(keys, await asyncio.gather(*(one(k) for k in keys)), strict=True))
