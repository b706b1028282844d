"""The direct read path of ``responses`` (and of the labels): checked, and fast.

Stores of format 2 keep ``responses`` in Zarr shards (one object of about 8 MB per block of
images) that hold inner chunks of at most 128 KB (or one image), each holding raw values (or
Blosc-compressed ones) followed by their CRC-32C; the shard's index of chunk offsets, with its
own CRC-32C, ends the object (``sharding_indexed``, index at the end).  zarr reads this
layout correctly but slowly (every inner chunk takes a trip through its event loop and a
copy); :class:`ShardReader` reads it the way a scan needs:

- locally, one read per run of back-to-back inner chunks (up to 512 KB) into a reused
  buffer, so the check, the decoding and a fused reduction (:func:`weighted_sums`) work on
  bytes still in the CPU cache; remotely, one request per shard, all of a task's shards at
  once;
- a few images cost two requests to a remote store: the index, then the byte range of the
  inner chunks that hold them;
- every inner chunk and every index is checked against its CRC-32C on every read, so damage
  is an error naming the object and the images, never a plausible value;
- the store's other checks stay in force: an object the manifest lists but the storage lacks
  is :class:`~nest_data.errors.MissingObjectError`, and ``verify``/``cache`` read whole
  objects through :class:`~nest_data._storage.NestStore`.

Stores in another layout (format 1, or foreign codecs) are read through zarr, unchanged.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import crc32c
import numpy as np
from numcodecs import Blosc, VLenUTF8, Zstd
from xarray.backends import BackendArray
from xarray.core import indexing
from zarr.abc.store import RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from nest_data._storage import NestStore, is_local, local_path
from nest_data.errors import ChecksumError, MissingObjectError, StoreFormatError

__all__ = ["Layout", "ShardReader", "dask_array", "encode_shard", "layout_of", "read_labels",
           "shard_reader", "take_images", "weighted_sums"]

_EMPTY = np.uint64(2**64 - 1)  # offset and length of an inner chunk that was never written
_INDEX_ENTRY = 16  # bytes per inner chunk in a shard index: offset and length, uint64 each
_CRC = 4
_RUN_BYTES = 512 * 2**10  # read and checked at once locally: fits the CPU's L2 cache


@dataclass(frozen=True)
class Layout:
    """Geometry of a sharded array whose shards split only along the first axis."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    shard: tuple[int, ...]  # shape of one shard (one stored object)
    inner_rows: int  # images per inner chunk (inner chunks span the shard's other axes)
    fill_value: float
    compressed: bool  # Blosc-compressed inner chunks (else raw little-endian bytes)

    @property
    def n_inner(self) -> int:
        return self.shard[0] // self.inner_rows

    @property
    def index_bytes(self) -> int:
        return self.n_inner * _INDEX_ENTRY + _CRC


def layout_of(array_meta: Mapping[str, Any]) -> Layout | None:
    """The layout of a ``responses`` array's metadata, or None if the direct path cannot read it.

    Readable: ``sharding_indexed`` with the index at the end, inner chunks spanning the shard
    along every axis but the first, codecs ``bytes`` (little-endian), ``blosc``, ``crc32c``,
    index codecs ``bytes`` (little-endian), ``crc32c``, and the default chunk key encoding.
    """
    try:
        (codec,) = array_meta["codecs"]
        config = codec["configuration"]
        shard = tuple(int(n) for n in array_meta["chunk_grid"]["configuration"]["chunk_shape"])
        inner = tuple(int(n) for n in config["chunk_shape"])
        names = [c["name"] for c in config["codecs"]]
        index_names = [c["name"] for c in config["index_codecs"]]
        little = all(c.get("configuration", {}).get("endian", "little") == "little"
                     for c in (*config["codecs"], *config["index_codecs"])
                     if c["name"] == "bytes")
        encoding = array_meta.get("chunk_key_encoding", {"name": "default"})
        readable = (codec["name"] == "sharding_indexed"
                    and config.get("index_location", "end") == "end"
                    and names in (["bytes", "blosc", "crc32c"], ["bytes", "crc32c"])
                    and index_names == ["bytes", "crc32c"] and little
                    and inner[1:] == shard[1:] and shard[0] % inner[0] == 0
                    and encoding.get("name") == "default"
                    and encoding.get("configuration", {}).get("separator", "/") == "/")
    except (KeyError, TypeError, ValueError):
        return None
    if not readable:
        return None
    fill = array_meta.get("fill_value")
    return Layout(shape=tuple(int(n) for n in array_meta["shape"]),
                  dtype=np.dtype(array_meta["data_type"]).newbyteorder("<"), shard=shard,
                  inner_rows=inner[0],
                  fill_value=float("nan") if fill in (None, "NaN") else float(fill),
                  compressed="blosc" in names)


def encode_shard(layout: Layout, block: np.ndarray, rows: int) -> np.ndarray:
    """One shard object of ``responses`` (as bytes, ``uint8``), exactly as zarr writes it.

    ``block`` holds the shard's values (its full shape, padded with the fill value past the
    array's end); ``rows`` of them are inside the array.  Each inner chunk is its raw
    little-endian values followed by their CRC-32C; inner chunks wholly past the array's end
    are not written (their index entry is empty), as zarr does.  Compressed layouts are
    written by zarr.

    Examples
    --------
    >>> lay = Layout(shape=(3, 2), dtype=np.dtype("<f4"), shard=(4, 2), inner_rows=2,
    ...              fill_value=float("nan"), compressed=False)
    >>> len(encode_shard(lay, np.zeros((4, 2), "<f4"), 3))  # 2 chunks of 16 + 4, index
    76
    """
    if layout.compressed or block.shape != layout.shard:
        raise ValueError(f"encode_shard writes raw shards of shape {layout.shard}; got "
                         f"{block.shape} ({'compressed' if layout.compressed else 'raw'})")
    n_inner, r = layout.n_inner, layout.inner_rows
    written = -(-rows // r)
    values = np.ascontiguousarray(block, dtype=layout.dtype)
    size = values.nbytes // n_inner  # bytes of one inner chunk's values
    out = np.empty(written * (size + _CRC) + layout.index_bytes, dtype=np.uint8)
    body = out[:written * (size + _CRC)].reshape(written, size + _CRC)
    body[:, :size] = values.view(np.uint8).reshape(n_inner, size)[:written]
    crc = crc32c.crc32c
    sums = np.array([crc(body[k, :size].data) for k in range(written)], dtype="<u4")
    body[:, size:] = sums.view(np.uint8).reshape(written, _CRC)
    index = np.full((n_inner, 2), _EMPTY, dtype="<u8")
    index[:written, 0] = np.arange(written, dtype=np.uint64) * np.uint64(size + _CRC)
    index[:written, 1] = size + _CRC
    tail = out[written * (size + _CRC):]
    tail[:-_CRC] = index.view(np.uint8).reshape(-1)
    tail[-_CRC:] = np.array([crc(tail[:-_CRC].data)], dtype="<u4").view(np.uint8)
    return out


def consolidated(store: NestStore) -> dict[str, Any]:
    """The metadata of every node of a store (its consolidated ``zarr.json``), or ``{}``."""
    root = sync(store.get("zarr.json", default_buffer_prototype()))
    if root is None:
        return {}
    try:
        return dict(json.loads(root.to_bytes())["consolidated_metadata"]["metadata"])
    except (KeyError, TypeError, ValueError):
        return {}


def shard_reader(store: NestStore, url: str, array_path: str,
                 metadata: Mapping[str, Any] | None = None) -> ShardReader | None:
    """A :class:`ShardReader` for ``array_path`` of an opened store, if its layout allows."""
    meta = (consolidated(store) if metadata is None else metadata).get(array_path)
    layout = layout_of(meta) if isinstance(meta, Mapping) else None
    if layout is None:
        return None
    return ShardReader(store, url, array_path, layout)


def read_labels(store: NestStore, url: str, metadata: Mapping[str, Any], names: Sequence[str]
                ) -> dict[str, Any] | None:
    """Whole small arrays (the labels), read at once without zarr's event loop; or None.

    Each must be one chunk encoded as nest-data writes labels (``bytes`` or ``vlen-utf8``,
    then ``zstd``); otherwise None, and the caller reads through zarr.  Local files are read
    directly; remote ones (and any with ``verify`` or ``cache``) through the store, all
    requests at once.  A chunk that the manifest lists and the storage lacks is
    :class:`~nest_data.errors.MissingObjectError`; one that was never written (all fill
    value) is the fill value.

    Numbers come back as NumPy arrays.  Strings are read now but decoded on first use (a
    lazily indexed array for xarray): making Python strings of three labels of 26,107
    images costs 20 ms, more than the rest of ``open``.
    """
    plan: dict[str, tuple[str, Mapping[str, Any]]] = {}
    for name in names:
        meta = metadata.get(name)
        if not isinstance(meta, Mapping) or not _is_label_layout(meta):
            return None
        plan[name] = (f"{name}/c" + "/0" * len(meta["shape"]), meta)
    keys = [key for key, _ in plan.values()]
    if is_local(url) and not (store.verify or store.cache is not None):
        folder = local_path(url)
        blobs = [_read_file(os.path.join(folder, key)) for key in keys]
    else:
        blobs = sync(_get_all(store, keys))
    out = {}
    for (name, (key, meta)), blob in zip(plan.items(), blobs, strict=True):
        if blob is None and key in store.manifest:
            raise MissingObjectError(store._missing(key))
        out[name] = (indexing.LazilyIndexedArray(_Strings(meta, blob))
                     if meta["data_type"] == "string" else _decode_label(meta, blob))
    return out


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


def _read_file(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


async def _get_all(store: NestStore, keys: Sequence[str]) -> list[bytes | None]:
    proto = default_buffer_prototype()
    buffers = await asyncio.gather(*(store.get(key, proto) for key in keys))
    return [None if b is None else b.to_bytes() for b in buffers]


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


@dataclass
class _Piece:
    """Inner chunks ``first..last`` of one shard, and where their rows go in the result."""

    key: str
    shard_row: int  # first image of the shard
    first: int
    last: int  # inclusive
    rows: slice  # rows of the selection inside the shard (shard coordinates)
    cols: tuple[slice, ...]  # selection along the other axes, in shard coordinates
    out: tuple[slice, ...]  # where those values go in the result
    # for ``take``, per picked image sorted by inner chunk: its chunk, its row within the
    # chunk, and its position in the result
    picks: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


class ShardReader:
    """A lazily read ``responses`` array: ``reader[key]`` reads only the shards it needs.

    Indexable like a NumPy array with slices, integers and one integer array (what
    :func:`dask.array.from_array` passes), so each dask task reads its own block of images,
    and a selection fused into the task (one image) reads only the inner chunks it covers.

    Parameters
    ----------
    store : NestStore
        The store, with its manifest (for missing objects, ``verify`` and ``cache``).
    url : str
        The store's URL (local folder or remote).
    array_path : str
        Path of the array inside the store (``responses``).
    layout : Layout
        Its geometry, from :func:`layout_of`.
    """

    def __init__(self, store: NestStore, url: str, array_path: str, layout: Layout) -> None:
        self.store = store
        self.url = url
        self.array_path = array_path
        self.layout = layout
        self.shape = layout.shape
        self.dtype = layout.dtype
        self.ndim = len(layout.shape)
        self._folder = local_path(url) if is_local(url) else None
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_local"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"ShardReader({self.url!r}, {self.array_path!r}, shape={self.shape})"

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return (type(self).__name__, self.url, self.array_path, self.layout,
                self.store.verify, self.store.cache is not None,
                self.store.manifest.get(f"{self.array_path}/zarr.json"))

    # -- planning ------------------------------------------------------------------------

    def __getitem__(self, key: Any) -> np.ndarray:
        box, then = _bounding_box(key, self.shape)
        out = np.empty(tuple(s.stop - s.start for s in box), dtype=self.dtype)
        if out.size:
            self._read(self._plan(box), functools.partial(self._decode, out=out))
        return out[then]

    def weighted_sum(self, rows: slice, weights: np.ndarray) -> np.ndarray:
        """``values[rows] @ weights`` over all other axes, without materialising the rows.

        Each inner chunk is decoded into a reused buffer and reduced with one float32
        matrix-vector product (BLAS); the result is float64.  For stores without NaN.

        Parameters
        ----------
        rows : slice
            Images (step 1).
        weights : numpy.ndarray
            One weight per value of a row (``shape[1:]``).

        Returns
        -------
        numpy.ndarray
            float64, one value per image.
        """
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError(f"weighted_sum takes a slice of images with step 1, got {rows!r}")
        lo, hi = rows.indices(self.shape[0])[:2]
        box = (slice(lo, hi), *(slice(0, n) for n in self.shape[1:]))
        out = np.zeros(max(0, hi - lo), dtype=np.float64)
        w = np.ascontiguousarray(weights, dtype=self.dtype).reshape(self.shape[1:])
        if out.size:
            self._read(self._plan(box), functools.partial(self._weigh, out=out, weights=w))
        return out

    def take(self, positions: np.ndarray) -> np.ndarray:
        """The images at ``positions`` (in that order), reading only the inner chunks
        that hold them (each still checked whole against its CRC-32C).

        Parameters
        ----------
        positions : numpy.ndarray
            Integer positions along the first axis (any order, repeats allowed).

        Returns
        -------
        numpy.ndarray
            ``(len(positions), *shape[1:])``.
        """
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        if pos.size and (pos.min() < 0 or pos.max() >= self.shape[0]):
            raise IndexError(f"positions {pos.min()}..{pos.max()} are out of range for "
                             f"{self.shape[0]} images")
        out = np.empty((pos.size, *self.shape[1:]), dtype=self.dtype)
        lay = self.layout
        full = tuple(slice(0, n) for n in self.shape[1:])
        pieces: list[_Piece] = []
        order = np.argsort(pos, kind="stable")
        chunk = pos[order] // lay.inner_rows
        shards = (np.flatnonzero(np.r_[True, np.diff(pos[order] // lay.shard[0]) != 0, True])
                  if pos.size else np.zeros(1, dtype=np.int64))
        for a, b in zip(shards[:-1].tolist(), shards[1:].tolist(), strict=True):
            start = int(pos[order[a]]) // lay.shard[0] * lay.shard[0]
            stop = min(start + lay.shard[0], self.shape[0])
            first = start // lay.inner_rows
            for piece in self._plan((slice(start, stop), *full)):
                piece.first, piece.last = int(chunk[a]) - first, int(chunk[b - 1]) - first
                piece.picks = (chunk[a:b] - first, pos[order[a:b]] % lay.inner_rows,
                               order[a:b])
                pieces.append(piece)
        if pieces:
            self._read(pieces, functools.partial(self._pick, out=out))
        return out

    def _read(self, pieces: Sequence[_Piece], sink: Callable[..., None]) -> None:
        """Hand ``(piece, source, index)`` of every piece to ``sink``, in turn.

        Local files are read one inner chunk at a time into a reused buffer, so checking,
        decoding and reducing a chunk work on bytes still in the CPU cache; remote objects
        (and any read with ``verify`` or ``cache``) are fetched through the store,
        concurrently.
        """
        if self._folder is not None and not (self.store.verify or self.store.cache is not None):
            for piece in pieces:
                path = os.path.join(self._folder, piece.key)
                try:
                    fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    raise MissingObjectError(self.store._missing(piece.key)) from None
                try:
                    size = os.fstat(fd).st_size
                    tail = _pread(fd, max(0, size - self.layout.index_bytes), size, piece.key)
                    sink(piece, _LocalFile(fd, size, piece.key, self._buffer),
                         self._index(piece, tail))
                finally:
                    os.close(fd)
            return
        for piece, (data, base, index) in zip(pieces, sync(self._fetch_all(pieces)),
                                              strict=True):
            sink(piece, _InMemory(data, base), index)

    def _plan(self, box: tuple[slice, ...]) -> list[_Piece]:
        lay = self.layout
        pieces: list[_Piece] = []
        rows = box[0]
        col_ranges = [_shard_ranges(s, lay.shard[d + 1]) for d, s in enumerate(box[1:])]
        for s_row, r_lo, r_hi in _shard_ranges(rows, lay.shard[0]):
            first, last = r_lo // lay.inner_rows, (r_hi - 1) // lay.inner_rows
            for combo in _product(col_ranges):
                key = "/".join([self.array_path, "c", str(s_row),
                                *(str(c[0]) for c in combo)])
                cols = tuple(slice(lo, hi) for _, lo, hi in combo)
                out_cols = tuple(
                    slice(c * lay.shard[d + 1] + lo - box[d + 1].start,
                          c * lay.shard[d + 1] + hi - box[d + 1].start)
                    for d, (c, lo, hi) in enumerate(combo))
                out_rows = slice(s_row * lay.shard[0] + r_lo - rows.start,
                                 s_row * lay.shard[0] + r_hi - rows.start)
                pieces.append(_Piece(key, s_row * lay.shard[0], first, last,
                                     slice(r_lo, r_hi), cols, (out_rows, *out_cols)))
        return pieces

    def _whole(self, piece: _Piece) -> bool:
        """Whether a piece needs every inner chunk of its shard that holds images."""
        valid = -(-min(self.layout.shard[0], self.shape[0] - piece.shard_row)
                  // self.layout.inner_rows)
        return piece.first == 0 and piece.last >= valid - 1

    # -- reading -------------------------------------------------------------------------

    async def _fetch_all(self, pieces: Sequence[_Piece]
                         ) -> list[tuple[memoryview, int, np.ndarray]]:
        """Fetch every piece through the store, concurrently (remote, cache or verify)."""
        return list(await asyncio.gather(*(self._fetch(p) for p in pieces)))

    async def _fetch(self, piece: _Piece) -> tuple[memoryview, int, np.ndarray]:
        proto = default_buffer_prototype()
        store = self.store
        partial = not (self._whole(piece) or store.verify or store.cache is not None)
        if not partial:
            buffer = await store.get(piece.key, proto)
            if buffer is None:
                raise MissingObjectError(store._missing(piece.key))
            data = memoryview(buffer.to_bytes())
            return data, 0, self._index(piece, data[-self.layout.index_bytes:])
        tail = await store.get(piece.key, proto, SuffixByteRequest(self.layout.index_bytes))
        if tail is None:
            raise MissingObjectError(store._missing(piece.key))
        index = self._index(piece, memoryview(tail.to_bytes()))
        lo, hi = self._span(piece, index, None)
        part = await store.get(piece.key, proto, RangeByteRequest(lo, hi))
        if part is None:
            raise MissingObjectError(store._missing(piece.key))
        return memoryview(part.to_bytes()), lo, index

    def _buffer(self, name: str, size: int) -> memoryview:
        """A per-thread reusable byte buffer of at least ``size`` bytes."""
        buf = getattr(self._local, name, None)
        if buf is None or len(buf) < size:
            buf = bytearray(max(size, 1))
            setattr(self._local, name, buf)
        return memoryview(buf)[:size]

    # -- checking and decoding -----------------------------------------------------------

    def _where(self, piece: _Piece, first: int | None = None, last: int | None = None) -> str:
        inner = self.layout.inner_rows
        lo = piece.shard_row + (first or 0) * inner
        hi = piece.shard_row + ((last + 1) * inner if last is not None else self.layout.shard[0])
        hi = min(hi, self.shape[0])
        return f"object {piece.key} of {self.url} (images {lo}-{hi - 1})"

    def _damaged(self, piece: _Piece, what: str, first: int | None = None,
                 last: int | None = None) -> ChecksumError:
        return ChecksumError(
            f"{self._where(piece, first, last)}: {what}. Its bytes changed after the store "
            "was written (on disk, in transit or in a cache); nothing was read in its place. "
            "Re-mirror or re-convert this entry, and run `nest-data verify` on its root.")

    def _index(self, piece: _Piece, tail: memoryview) -> np.ndarray:
        """The shard index (offset, length per inner chunk), checked against its CRC-32C."""
        n = self.layout.n_inner
        if len(tail) != self.layout.index_bytes:
            raise self._damaged(piece, f"it is too short to hold its index ({len(tail)} "
                                       f"bytes at its end, {self.layout.index_bytes} needed)")
        body = tail[:-_CRC]
        if not _crc_ok(tail):
            raise self._damaged(piece, "its index of inner chunks fails its CRC-32C check")
        return np.frombuffer(body, dtype="<u8").reshape(n, 2)

    def _span(self, piece: _Piece, index: np.ndarray, size: int | None) -> tuple[int, int]:
        """The byte range holding inner chunks ``first..last`` of a piece."""
        used = index[piece.first:piece.last + 1]
        used = used[used[:, 0] != _EMPTY]
        if not len(used):
            return 0, 0
        lo, hi = int(used[:, 0].min()), int((used[:, 0] + used[:, 1]).max())
        if size is not None and hi > size:
            raise self._damaged(piece, f"its index points past its end ({hi} > {size} bytes)")
        return lo, hi

    def _runs(self, piece: _Piece, source: _Source, index: np.ndarray, chunks: np.ndarray
              ) -> Iterator[tuple[int, np.ndarray | None]]:
        """The inner chunks ``chunks`` (sorted, unique) of a piece, checked, in runs.

        Chunks stored back to back are read together, up to about 512 KB at a time (one
        system call locally, bytes still in the CPU cache when they are reduced), and each is
        checked against its CRC-32C.  Yields ``(i, values)``: ``values`` holds chunks
        ``i, i+1, ...`` as an array ``(m, inner_rows, *shard[1:])`` (raw chunks: a view of
        the bytes read, no copy), or is None for a chunk that was never written.  The values
        live in reused buffers: use them before asking for the next run.
        """
        lay = self.layout
        off = index[chunks, 0].astype(np.int64)  # a never-written chunk: -1
        length = index[chunks, 1].astype(np.int64)
        empty = off < 0
        expected = self._inner_nbytes + _CRC
        wrong = length != expected if not lay.compressed else length < _CRC
        bad = np.flatnonzero(~empty & wrong)
        if bad.size:
            i = int(chunks[bad[0]])
            want = f"{expected}" if not lay.compressed else f"at least {_CRC}"
            raise self._damaged(piece, f"its index gives inner chunk {i} {int(length[bad[0]])} "
                                       f"bytes, not {want}", i, i)
        per = max(1, _RUN_BYTES // expected)
        joined = ((chunks[1:] == chunks[:-1] + 1) & (off[1:] == off[:-1] + length[:-1])
                  & ~empty[1:] & ~empty[:-1])
        starts = np.flatnonzero(np.r_[True, ~joined]).tolist()
        # plain lists from here: this loop runs once per run, often of one chunk
        ids, offs, lens = chunks.tolist(), off.tolist(), length.tolist()
        for s, e in zip(starts, [*starts[1:], len(ids)], strict=True):
            if offs[s] < 0:
                yield ids[s], None
                continue
            for a in range(s, e, per):
                b = min(a + per, e)
                lo, hi = offs[a], offs[b - 1] + lens[b - 1]
                data = source.bytes(lo, hi - lo)
                if data is None:
                    raise self._damaged(piece, f"its index places inner chunks {ids[a]}-"
                                               f"{ids[b - 1]} outside the object",
                                        ids[a], ids[b - 1])
                yield ids[a], self._check(piece, data, ids[a], [o - lo for o in offs[a:b]],
                                          lens[a:b])

    @functools.cached_property
    def _inner_nbytes(self) -> int:
        return int(np.prod(self._inner_shape)) * self.dtype.itemsize

    @functools.cached_property
    def _inner_shape(self) -> tuple[int, ...]:
        return (self.layout.inner_rows, *self.layout.shard[1:])

    @functools.cached_property
    def _run_strides(self) -> tuple[int, ...]:
        """Strides of a run of raw inner chunks: chunk to chunk, then C order within one."""
        shape = self._inner_shape
        within = [self.dtype.itemsize * int(np.prod(shape[k + 1:])) for k in range(len(shape))]
        return (self._inner_nbytes + _CRC, *within)

    def _check(self, piece: _Piece, data: memoryview, first: int, starts: list[int],
               lengths: list[int]) -> np.ndarray:
        """Inner chunks ``first, first+1, ...`` at ``starts`` in ``data``: checked, decoded."""
        bad = _crc_failures(data, starts, lengths)
        if bad:
            i = first + bad[0]
            raise self._damaged(piece, f"inner chunk {i} fails its CRC-32C check", i, i)
        shape = self._inner_shape
        if not self.layout.compressed:  # back to back, each its values then 4 bytes of CRC
            return np.ndarray((len(starts), *shape), dtype=self.dtype, buffer=data,
                              strides=self._run_strides)
        out = self._scratch(len(starts))
        for k, (s, n) in enumerate(zip(starts, lengths, strict=True)):
            try:
                _BLOSC.decode(data[s:s + n - _CRC], out=out[k])
            except Exception as exc:  # a chunk that passed its CRC but is no Blosc frame
                i = first + k
                raise StoreFormatError(
                    f"{self._where(piece, i, i)}: inner chunk {i} passes its CRC-32C but does "
                    f"not decode as Blosc ({exc}); the store was written by other software. "
                    "Re-convert this entry with nest-data.") from exc
        return out

    def _span_rows(self, piece: _Piece, i: int, m: int) -> tuple[slice, slice]:
        """Rows of inner chunks ``i..i+m-1`` that a piece needs: within them, and in the result."""
        inner = self.layout.inner_rows
        first = i * inner
        lo, hi = max(piece.rows.start, first), min(piece.rows.stop, first + m * inner)
        shift = piece.out[0].start - piece.rows.start
        return slice(lo - first, hi - first), slice(lo + shift, hi + shift)

    def _decode(self, piece: _Piece, source: _Source, index: np.ndarray, *,
                out: np.ndarray) -> None:
        """Decode inner chunks ``first..last`` of a piece into their place in ``out``."""
        for i, values in self._runs(piece, source, index,
                                    np.arange(piece.first, piece.last + 1)):
            rows, dest_rows = self._span_rows(piece, i, 1 if values is None else len(values))
            dest = out[(dest_rows, *piece.out[1:])]
            if values is None:
                dest[...] = self.layout.fill_value
            else:
                _put(dest, values, rows, piece.cols)

    def _pick(self, piece: _Piece, source: _Source, index: np.ndarray, *, out: np.ndarray
              ) -> None:
        """Copy the picked rows of the inner chunks a piece needs into ``out``."""
        chunk, row, where = cast(tuple[np.ndarray, np.ndarray, np.ndarray], piece.picks)
        chunks, rows, places = chunk.tolist(), row.tolist(), where.tolist()
        cols = piece.out[1:]
        a = 0
        for i, values in self._runs(piece, source, index, np.unique(chunk)):
            b = a
            while b < len(chunks) and chunks[b] < i + (1 if values is None else len(values)):
                b += 1
            for k in range(a, b):  # one image at a time: plain indexing, no index arrays
                if values is None:
                    out[(places[k], *cols)] = self.layout.fill_value
                else:
                    out[(places[k], *cols)] = values[(chunks[k] - i, rows[k], *piece.cols)]
            a = b

    def _weigh(self, piece: _Piece, source: _Source, index: np.ndarray, *,
               out: np.ndarray, weights: np.ndarray) -> None:
        """Add each needed row of a piece, dotted with its weights, to ``out``."""
        w = weights[piece.out[1:]].reshape(-1)
        for i, values in self._runs(piece, source, index,
                                    np.arange(piece.first, piece.last + 1)):
            rows, dest_rows = self._span_rows(piece, i, 1 if values is None else len(values))
            if values is None:
                out[dest_rows] += float(self.layout.fill_value) * float(w.sum())
                continue
            m, r = values.shape[:2]
            # one float32 matrix-vector product per inner chunk (BLAS reads the rows in place)
            block = values[(slice(None), slice(None), *piece.cols)].reshape(m, r, -1)
            out[dest_rows] += (block[:, 0] @ w if r == 1 else block @ w).reshape(-1)[rows]

    def _scratch(self, m: int) -> np.ndarray:
        """A per-thread reused array of ``m`` inner chunks."""
        nbytes = m * self._inner_nbytes
        return np.frombuffer(self._buffer("scratch", nbytes),
                             dtype=self.dtype).reshape(m, *self._inner_shape)


def _put(dest: np.ndarray, values: np.ndarray, rows: slice, cols: tuple[slice, ...]) -> None:
    """``dest[...] = `` rows ``rows`` of a run of inner chunks ``(m, inner_rows, ...)``."""
    m, r = values.shape[:2]
    if r == 1:
        dest[...] = values[rows, 0][(slice(None), *cols)]
    elif (rows.start % r == 0 and rows.stop % r == 0 and dest.flags.c_contiguous
          and dest.shape[1:] == values.shape[2:]):  # whole chunks: no intermediate copy
        dest.reshape(-1, *values.shape[1:])[...] = values[rows.start // r:rows.stop // r]
    else:
        dest[...] = values.reshape(m * r, *values.shape[2:])[rows][(slice(None), *cols)]


_BLOSC = Blosc()
_ZSTD = Zstd()
_VLEN_UTF8 = VLenUTF8()


class _Source(Protocol):
    def bytes(self, offset: int, length: int) -> memoryview | None:
        """Bytes ``offset..offset+length`` of the object, or None if it has no such bytes."""


class _InMemory:
    """Bytes of an object fetched into memory, from byte ``base`` of the object on."""

    def __init__(self, data: memoryview, base: int) -> None:
        self.data, self.base = data, base

    def bytes(self, offset: int, length: int) -> memoryview | None:
        start = offset - self.base
        if start < 0 or start + length > len(self.data):
            return None
        return self.data[start:start + length]


class _LocalFile:
    """An open local object, read one range at a time into a reused per-thread buffer."""

    def __init__(self, fd: int, size: int, key: str,
                 buffer: Callable[[str, int], memoryview]) -> None:
        self.fd, self.size, self.key, self.buffer = fd, size, key, buffer

    def bytes(self, offset: int, length: int) -> memoryview | None:
        if offset < 0 or offset + length > self.size:
            return None
        data = self.buffer("chunk", length)
        _pread_into(self.fd, data, offset, self.key)
        return data
# The reader behind each dask array that ``dask_array`` made, by the array's name: any
# operation on the array makes a new name, so a hit means the array is the stored values.
_READERS: weakref.WeakValueDictionary[str, ShardReader] = weakref.WeakValueDictionary()


def dask_array(reader: ShardReader, chunks: tuple[int, ...], token: str) -> Any:
    """The stored array as a dask array whose tasks read through ``reader``.

    A selection fused into a task (``da.isel(image=3)``) reaches ``reader`` as a narrow
    slice, so it reads only the inner chunks it needs.
    """
    import dask.array

    name = f"{reader.array_path}-{token}"
    # fancy=True: dask then fuses a selection into the reading task (with fancy=False it
    # reads whole blocks and selects after)
    array = dask.array.from_array(reader, chunks=chunks, name=name, asarray=False, lock=False,
                                  fancy=True,
                                  meta=np.empty((0,) * reader.ndim, dtype=reader.dtype))
    _READERS[array.name] = reader
    return array


def weighted_sums(array: Any, weights: np.ndarray) -> Any | None:
    """``array @ weights`` over all axes but the first, fused with the reads; or None.

    None unless ``array`` is exactly a dask array made by :func:`dask_array` (no selection
    or other operation applied): each task then decodes its images one inner chunk at a
    time into a reused buffer and reduces it there (:meth:`ShardReader.weighted_sum`).
    """
    reader = _READERS.get(getattr(array, "name", ""))
    if reader is None or tuple(array.shape) != reader.shape:
        return None
    import dask.array

    index = dask.array.arange(reader.shape[0], chunks=(array.chunks[0],))
    return index.map_blocks(_weighted_block, reader=reader, weights=weights, dtype=np.float64,
                            meta=np.empty((0,), dtype=np.float64))


def take_images(array: Any, positions: np.ndarray) -> Any | None:
    """``array[positions]`` along the first axis as a dask array reading only what it needs;
    or None.

    None unless ``array`` is exactly a dask array made by :func:`dask_array`.  One task reads
    the inner chunks that hold the positions (:meth:`ShardReader.take`: locally one read per
    run of chunks, remotely every shard's requests at once); a dask selection would read
    every block whole.
    """
    reader = _READERS.get(getattr(array, "name", ""))
    if reader is None or tuple(array.shape) != reader.shape:
        return None
    import dask.array
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    pos = np.asarray(positions, dtype=np.int64).reshape(-1)
    name = f"take-{tokenize(array.name, pos)}"
    layer: dict[Any, Any] = {(name, *(0,) * reader.ndim): (reader.take, pos)}
    graph = HighLevelGraph.from_collections(name, layer, dependencies=())
    return dask.array.Array(graph, name, chunks=tuple((n,) for n in (pos.size, *reader.shape[1:])),
                            dtype=reader.dtype)


def _weighted_block(index: np.ndarray, *, reader: ShardReader, weights: np.ndarray
                    ) -> np.ndarray:
    if not index.size:
        return np.zeros(0, dtype=np.float64)
    return reader.weighted_sum(slice(int(index[0]), int(index[-1]) + 1), weights)


def _crc_ok(data: memoryview) -> bool:
    """Whether ``data`` ends with the CRC-32C (little-endian) of the bytes before it."""
    # the crc32c package releases the GIL on large buffers, so threads check in parallel
    return int(crc32c.crc32c(data[:-_CRC])).to_bytes(_CRC, "little") == data[-_CRC:]


def _crc_failures(data: memoryview, starts: list[int], lengths: list[int]) -> list[int]:
    """Which of the pieces ``data[s:s+n]`` do not end with the CRC-32C of their other bytes.

    Pieces of one length that fill ``data`` back to back are checked with one CRC over all
    of them: the CRC-32C of intact pieces (each followed by its own CRC) depends only on
    their lengths (:func:`_intact_crc`), and one call over half a megabyte runs without the
    GIL where thousands of small calls would hold it.  Any damage changes that CRC (missed
    with probability 2**-32, as for one piece); the damaged piece is then found one by one.
    """
    crc = crc32c.crc32c  # looked up once: the loop below runs once per piece
    if (len(set(lengths)) == 1 and starts[0] == 0 and len(data) == len(starts) * lengths[0]
            and crc(data) == _intact_crc(len(starts), lengths[0])):
        return []
    return [k for k, (s, n) in enumerate(zip(starts, lengths, strict=True))
            if crc(data[s:s + n - _CRC]) != int.from_bytes(data[s + n - _CRC:s + n], "little")]


@functools.lru_cache(maxsize=64)
def _intact_crc(count: int, length: int) -> int:
    """The CRC-32C of ``count`` intact pieces of ``length`` bytes, each ending in its CRC."""
    zeros = bytes(length - _CRC)
    return int(crc32c.crc32c((zeros + crc32c.crc32c(zeros).to_bytes(_CRC, "little")) * count))


def _pread(fd: int, lo: int, hi: int, key: str) -> memoryview:
    data = memoryview(bytearray(hi - lo))
    _pread_into(fd, data, lo, key)
    return data


def _pread_into(fd: int, data: memoryview, offset: int, key: str) -> None:
    done = 0
    while done < len(data):
        n = os.preadv(fd, [data[done:]], offset + done)
        if n == 0:
            raise ChecksumError(f"object {key} ended after {offset + done} bytes while "
                                f"{offset + len(data)} were expected; it was truncated")
        done += n


def _bounding_box(key: Any, shape: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[Any, ...]]:
    """The box of values a NumPy-style key touches, and the key to apply to that box.

    Slices (any positive step), integers and integer arrays are accepted: what dask passes
    (``from_array`` fuses a selection such as ``da[3]`` into a task as ``(3, slice(...))``).

    Examples
    --------
    >>> _bounding_box((3, slice(2, 9, 3)), (10, 10))
    ((slice(3, 4, None), slice(2, 9, None)), (0, slice(None, None, 3)))
    """
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        i = next(n for n, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (len(shape) - len(key) + 1) + key[i + 1:]
    key = key + (slice(None),) * (len(shape) - len(key))
    if len(key) != len(shape):
        raise IndexError(f"too many indices for an array of shape {shape}: {key!r}")
    box: list[slice] = []
    then: list[Any] = []
    for k, n in zip(key, shape, strict=True):
        if isinstance(k, slice):
            if (k.step or 1) < 0:
                raise IndexError(f"negative steps are not supported here: {k!r}")
            lo, hi, step = k.indices(n)
            hi = max(lo, hi)
            box.append(slice(lo, hi))
            then.append(slice(None, None, step if step != 1 else None))
        elif isinstance(k, (int, np.integer)):
            i = int(k) + n if k < 0 else int(k)
            if not 0 <= i < n:
                raise IndexError(f"index {k} is out of bounds for an axis of size {n}")
            box.append(slice(i, i + 1))
            then.append(0)
        else:
            picks = np.asarray(k)
            if picks.dtype == bool:
                picks = np.flatnonzero(picks)
            picks = np.where(picks < 0, picks + n, picks).astype(np.int64)
            if picks.size and not (0 <= picks.min() and picks.max() < n):
                raise IndexError(f"indices {k!r} are out of bounds for an axis of size {n}")
            lo = int(picks.min()) if picks.size else 0
            box.append(slice(lo, int(picks.max()) + 1 if picks.size else 0))
            then.append(picks - lo)
    arrays = [t for t in then if isinstance(t, np.ndarray)]
    if len(arrays) > 1:  # NumPy would broadcast several index arrays: take them one by one
        raise IndexError("one integer-array index at a time is supported here")
    return tuple(box), tuple(then)


def _shard_ranges(sel: slice, size: int) -> list[tuple[int, int, int]]:
    """``(shard, lo, hi)`` per shard that ``sel`` (step 1) touches, in shard coordinates."""
    out = []
    start, stop = sel.start, sel.stop
    shard = start // size
    while start < stop:
        hi = min(stop, (shard + 1) * size)
        out.append((shard, start - shard * size, hi - shard * size))
        start, shard = hi, shard + 1
    return out


def _product(ranges: list[list[tuple[int, int, int]]]) -> list[tuple[tuple[int, int, int], ...]]:
    combos: list[tuple[tuple[int, int, int], ...]] = [()]
    for options in ranges:
        combos = [(*c, o) for c in combos for o in options]
    return combos

