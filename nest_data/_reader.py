"""The direct read path of ``responses`` (and of the labels): checked, and fast.

Stores of format 2 keep ``responses`` in Zarr shards (one object of about 8 MB per block of
images) that hold inner chunks of at most 128 KB (or one image), each holding raw values (or
Blosc-compressed ones) followed by their CRC-32C; the shard's index of chunk offsets, with its
own CRC-32C, ends the object (``sharding_indexed``, index at the end).  zarr reads this
layout correctly but slowly (every inner chunk takes a trip through its event loop and a
copy); :class:`ShardReader` reads it the way a scan needs:

- locally, one read per run of back-to-back inner chunks (up to 512 KB) into a reused
  buffer, so the check, the decoding and a fused reduction
  (:func:`nest_data._dask.weighted_sums`) work on bytes still in the CPU cache; remotely,
  one request per shard, all of a task's shards at once;
- a few images cost two requests to a remote store: the index, then the byte range of the
  inner chunks that hold them; scattered images (:meth:`ShardReader.take`, what ``rsm``
  reads) cost, per shard, the inner chunks holding them, read side by side into one buffer
  and checked with one CRC-32C;
- every inner chunk and every index is checked against its CRC-32C on every read, so damage
  is an error naming the object and the images, never a plausible value;
- the store's other checks stay in force: an object the manifest lists but the storage lacks
  is :class:`~nest_data.errors.MissingObjectError`, and ``verify``/``cache`` read whole
  objects through :class:`~nest_data._storage.NestStore`.

Which route a read takes (local files directly, or the store's ``get``) is the store's
decision (:attr:`NestStore.direct_folder`); checking and decoding the bytes is
:class:`~nest_data._inner.InnerChunks`'s.  Stores in another layout (format 1, or foreign
codecs) are read through zarr, unchanged.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from zarr.abc.store import RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from nest_data import _shards
from nest_data._inner import InnerChunks, Piece
from nest_data._labels import consolidated
from nest_data._shards import Layout, layout_of
from nest_data._sources import InMemory, LocalFile, pread
from nest_data._storage import NestStore

__all__ = ["ShardReader", "shard_reader"]


def shard_reader(store: NestStore, url: str, array_path: str,
                 metadata: Mapping[str, Any] | None = None) -> ShardReader | None:
    """A :class:`ShardReader` for ``array_path`` of an opened store, if its layout allows."""
    meta = (consolidated(store) if metadata is None else metadata).get(array_path)
    layout = layout_of(meta) if isinstance(meta, Mapping) else None
    if layout is None:
        return None
    return ShardReader(store, url, array_path, layout)


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
        self.chunks = InnerChunks(url, layout)

    def __repr__(self) -> str:
        return f"ShardReader({self.url!r}, {self.array_path!r}, shape={self.shape})"

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return (type(self).__name__, self.array_path, self.layout, self.store)

    # -- planning ------------------------------------------------------------------------

    def __getitem__(self, key: Any) -> np.ndarray:
        box, then = _shards.bounding_box(key, self.shape)
        if isinstance(then[0], np.ndarray):  # picked images: only the chunks holding them
            return self.take(then[0] + box[0].start, box[1:])[(slice(None), *then[1:])]
        out = np.empty(tuple(s.stop - s.start for s in box), dtype=self.dtype)
        if out.size:
            self._read(self._plan(box), functools.partial(self.chunks.decode, out=out))
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
            self._read(self._plan(box), functools.partial(self.chunks.weigh, out=out, weights=w))
        return out

    def take(self, positions: np.ndarray, cols: tuple[slice, ...] | None = None
             ) -> np.ndarray:
        """The images at ``positions`` (in that order), reading only the inner chunks
        that hold them (each still checked whole against its CRC-32C).

        Parameters
        ----------
        positions : numpy.ndarray
            Integer positions along the first axis (any order, repeats allowed).
        cols : tuple of slice, optional
            Part of the other axes (step 1); default all.

        Returns
        -------
        numpy.ndarray
            ``(len(positions), *shape[1:])``, or the sizes of ``cols``.
        """
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        if pos.size and (pos.min() < 0 or pos.max() >= self.shape[0]):
            raise IndexError(f"positions {pos.min()}..{pos.max()} are out of range for "
                             f"{self.shape[0]} images")
        lay = self.layout
        full = tuple(slice(0, n) for n in self.shape[1:]) if cols is None else cols
        out = np.empty((pos.size, *(s.stop - s.start for s in full)), dtype=self.dtype)
        pieces: list[Piece] = []
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
            self._read(pieces, functools.partial(self.chunks.pick, out=out))
        return out

    @property
    def reads_files(self) -> bool:
        """Whether reads go straight to local files (the store's route:
        :attr:`NestStore.direct_folder`)."""
        return self.store.direct_folder is not None

    def _read(self, pieces: Sequence[Piece], sink: Callable[..., None]) -> None:
        """Hand ``(piece, source, index)`` of every piece to ``sink``.

        Local files are read run by run of inner chunks into reused buffers (a scan: one run
        at a time, so checking, decoding and reducing work on bytes still in the CPU cache; a
        ``take``: a shard's scattered chunks side by side); remote objects (and any read with
        ``verify`` or ``cache``) are fetched through the store, concurrently.
        """
        folder = self.store.direct_folder
        if folder is not None:
            for piece in pieces:
                self._read_local(folder, piece, sink)
            return
        for piece, (data, base, index) in zip(pieces, sync(self._fetch_all(pieces)),
                                              strict=True):
            sink(piece, InMemory(data, base), index)

    def _read_local(self, folder: str, piece: Piece, sink: Callable[..., None]) -> None:
        """Read one piece from its shard file in ``folder`` and hand it to ``sink``."""
        try:
            fd = os.open(os.path.join(folder, piece.key), os.O_RDONLY)
        except FileNotFoundError:
            raise self.store.missing(piece.key) from None
        try:
            size = os.fstat(fd).st_size
            tail = pread(fd, max(0, size - self.layout.index_bytes), size, piece.key)
            sink(piece, LocalFile(fd, size, piece.key, self.chunks.buffer),
                 self.chunks.index(piece, tail))
        finally:
            os.close(fd)

    def _plan(self, box: tuple[slice, ...]) -> list[Piece]:
        lay = self.layout
        pieces: list[Piece] = []
        rows = box[0]
        col_ranges = [_shards.shard_ranges(s, lay.shard[d + 1]) for d, s in enumerate(box[1:])]
        for s_row, r_lo, r_hi in _shards.shard_ranges(rows, lay.shard[0]):
            first, last = r_lo // lay.inner_rows, (r_hi - 1) // lay.inner_rows
            for combo in _shards.product(col_ranges):
                key = "/".join([self.array_path, "c", str(s_row),
                                *(str(c[0]) for c in combo)])
                cols = tuple(slice(lo, hi) for _, lo, hi in combo)
                out_cols = tuple(
                    slice(c * lay.shard[d + 1] + lo - box[d + 1].start,
                          c * lay.shard[d + 1] + hi - box[d + 1].start)
                    for d, (c, lo, hi) in enumerate(combo))
                out_rows = slice(s_row * lay.shard[0] + r_lo - rows.start,
                                 s_row * lay.shard[0] + r_hi - rows.start)
                pieces.append(Piece(key, s_row * lay.shard[0], first, last,
                                    slice(r_lo, r_hi), cols, (out_rows, *out_cols)))
        return pieces

    def _whole(self, piece: Piece) -> bool:
        """Whether a piece needs every inner chunk of its shard that holds images."""
        valid = -(-min(self.layout.shard[0], self.shape[0] - piece.shard_row)
                  // self.layout.inner_rows)
        return piece.first == 0 and piece.last >= valid - 1

    # -- reading -------------------------------------------------------------------------

    async def _fetch_all(self, pieces: Sequence[Piece]
                         ) -> list[tuple[memoryview, int, np.ndarray]]:
        """Fetch every piece through the store, concurrently (remote, cache or verify)."""
        return list(await asyncio.gather(*(self._fetch(p) for p in pieces)))

    async def _fetch(self, piece: Piece) -> tuple[memoryview, int, np.ndarray]:
        proto = default_buffer_prototype()
        store = self.store
        partial = not (self._whole(piece) or store.reads_whole_objects)
        if not partial:
            buffer = await store.get(piece.key, proto)
            if buffer is None:
                raise store.missing(piece.key)
            data = memoryview(buffer.to_bytes())
            return data, 0, self.chunks.index(piece, data[-self.layout.index_bytes:])
        tail = await store.get(piece.key, proto, SuffixByteRequest(self.layout.index_bytes))
        if tail is None:
            raise store.missing(piece.key)
        index = self.chunks.index(piece, memoryview(tail.to_bytes()))
        lo, hi = self.chunks.span(piece, index, None)
        part = await store.get(piece.key, proto, RangeByteRequest(lo, hi))
        if part is None:
            raise store.missing(piece.key)
        return memoryview(part.to_bytes()), lo, index
