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

Stores in another layout (format 1, or foreign codecs) are read through zarr, unchanged.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from numcodecs import Blosc
from zarr.abc.store import RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from nest_data import _shards
from nest_data._labels import consolidated
from nest_data._shards import Layout, layout_of
from nest_data._sources import InMemory, LocalFile, Source, pread
from nest_data._storage import NestStore
from nest_data._urls import is_local, local_path
from nest_data.errors import ChecksumError, MissingObjectError, StoreFormatError

__all__ = ["ShardReader", "shard_reader"]

_RUN_BYTES = 512 * 2**10  # read and checked at once locally: fits the CPU's L2 cache


def shard_reader(store: NestStore, url: str, array_path: str,
                 metadata: Mapping[str, Any] | None = None) -> ShardReader | None:
    """A :class:`ShardReader` for ``array_path`` of an opened store, if its layout allows."""
    meta = (consolidated(store) if metadata is None else metadata).get(array_path)
    layout = layout_of(meta) if isinstance(meta, Mapping) else None
    if layout is None:
        return None
    return ShardReader(store, url, array_path, layout)


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
        box, then = _shards.bounding_box(key, self.shape)
        if isinstance(then[0], np.ndarray):  # picked images: only the chunks holding them
            return self.take(then[0] + box[0].start, box[1:])[(slice(None), *then[1:])]
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

    @property
    def reads_files(self) -> bool:
        """Whether reads go straight to local files (not through the store: a remote one,
        or one that verifies against the manifest or caches)."""
        return self._folder is not None and not (self.store.verify
                                                 or self.store.cache is not None)

    def _read(self, pieces: Sequence[_Piece], sink: Callable[..., None]) -> None:
        """Hand ``(piece, source, index)`` of every piece to ``sink``.

        Local files are read run by run of inner chunks into reused buffers (a scan: one run
        at a time, so checking, decoding and reducing work on bytes still in the CPU cache; a
        ``take``: a shard's scattered chunks side by side); remote objects (and any read with
        ``verify`` or ``cache``) are fetched through the store, concurrently.
        """
        if self.reads_files:
            for piece in pieces:
                self._read_local(piece, sink)
            return
        for piece, (data, base, index) in zip(pieces, sync(self._fetch_all(pieces)),
                                              strict=True):
            sink(piece, InMemory(data, base), index)

    def _read_local(self, piece: _Piece, sink: Callable[..., None]) -> None:
        """Read one piece from its local shard file and hand it to ``sink``."""
        path = os.path.join(cast(str, self._folder), piece.key)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise MissingObjectError(self.store._missing(piece.key)) from None
        try:
            size = os.fstat(fd).st_size
            tail = pread(fd, max(0, size - self.layout.index_bytes), size, piece.key)
            sink(piece, LocalFile(fd, size, piece.key, self._buffer), self._index(piece, tail))
        finally:
            os.close(fd)

    def _plan(self, box: tuple[slice, ...]) -> list[_Piece]:
        lay = self.layout
        pieces: list[_Piece] = []
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
        body = tail[:-_shards.CRC_BYTES]
        if not _shards.crc_ok(tail):
            raise self._damaged(piece, "its index of inner chunks fails its CRC-32C check")
        return np.frombuffer(body, dtype="<u8").reshape(n, 2)

    def _span(self, piece: _Piece, index: np.ndarray, size: int | None) -> tuple[int, int]:
        """The byte range holding inner chunks ``first..last`` of a piece."""
        used = index[piece.first:piece.last + 1]
        used = used[used[:, 0] != _shards.EMPTY]
        if not len(used):
            return 0, 0
        lo, hi = int(used[:, 0].min()), int((used[:, 0] + used[:, 1]).max())
        if size is not None and hi > size:
            raise self._damaged(piece, f"its index points past its end ({hi} > {size} bytes)")
        return lo, hi

    def _located(self, piece: _Piece, index: np.ndarray, chunks: np.ndarray
                 ) -> tuple[list[int], list[int], list[int], list[int]]:
        """Where inner chunks ``chunks`` (sorted, unique) of a piece are: ``(ids, offsets,
        lengths, starts)``, as plain lists, with ``starts`` the positions in ``chunks`` that
        begin a run of chunks stored back to back (a never-written chunk, offset -1, is a
        run of its own).  Lengths the layout cannot have are damage, and raise."""
        off = index[chunks, 0].astype(np.int64)  # a never-written chunk: -1
        length = index[chunks, 1].astype(np.int64)
        empty = off < 0
        expected = self._inner_nbytes + _shards.CRC_BYTES
        compressed = self.layout.compressed
        wrong = length != expected if not compressed else length < _shards.CRC_BYTES
        bad = np.flatnonzero(~empty & wrong)
        if bad.size:
            i = int(chunks[bad[0]])
            want = f"{expected}" if not compressed else f"at least {_shards.CRC_BYTES}"
            raise self._damaged(piece, f"its index gives inner chunk {i} {int(length[bad[0]])} "
                                       f"bytes, not {want}", i, i)
        joined = ((chunks[1:] == chunks[:-1] + 1) & (off[1:] == off[:-1] + length[:-1])
                  & ~empty[1:] & ~empty[:-1])
        # plain lists from here: the callers loop once per run, often of one chunk
        return (chunks.tolist(), off.tolist(), length.tolist(),
                np.flatnonzero(np.concatenate(([True], ~joined))).tolist())

    def _outside(self, piece: _Piece, first: int, last: int) -> ChecksumError:
        return self._damaged(piece, f"its index places inner chunks {first}-{last} outside "
                                    "the object", first, last)

    def _runs(self, piece: _Piece, source: Source, index: np.ndarray, chunks: np.ndarray
              ) -> Iterator[tuple[int, np.ndarray | None]]:
        """The inner chunks ``chunks`` (sorted, unique) of a piece, checked, in runs.

        Chunks stored back to back are read together, up to about 512 KB at a time (one
        system call locally, bytes still in the CPU cache when they are reduced), and each is
        checked against its CRC-32C.  Yields ``(i, values)``: ``values`` holds chunks
        ``i, i+1, ...`` as an array ``(m, inner_rows, *shard[1:])`` (raw chunks: a view of
        the bytes read, no copy), or is None for a chunk that was never written.  The values
        live in reused buffers: use them before asking for the next run.
        """
        ids, offs, lens, starts = self._located(piece, index, chunks)
        per = max(1, _RUN_BYTES // (self._inner_nbytes + _shards.CRC_BYTES))
        for s, e in zip(starts, [*starts[1:], len(ids)], strict=True):
            if offs[s] < 0:
                yield ids[s], None
                continue
            for a in range(s, e, per):
                b = min(a + per, e)
                lo, hi = offs[a], offs[b - 1] + lens[b - 1]
                data = source.bytes(lo, hi - lo)
                if data is None:
                    raise self._outside(piece, ids[a], ids[b - 1])
                yield ids[a], self._check(piece, data, ids[a], [o - lo for o in offs[a:b]],
                                          lens[a:b])

    def _gather(self, piece: _Piece, source: Source, index: np.ndarray, chunks: np.ndarray
                ) -> np.ndarray:
        """The inner chunks ``chunks`` (sorted, unique) of a piece, checked, as one array
        ``(len(chunks), inner_rows, *shard[1:])`` in a reused buffer; a never-written chunk
        holds the fill value.

        Raw chunks are read straight into place, back to back, each still followed by its
        CRC-32C, so one CRC over the whole buffer checks them all (:func:`crc_failures`):
        a selection scattered over a shard costs one system call per run and one check.
        """
        n = len(chunks)
        fill = self.layout.fill_value
        if self.layout.compressed:  # decoded run by run into a reused buffer: copied out
            values = np.empty((n, *self._inner_shape), dtype=self.dtype)
            k = 0
            for _, run in self._runs(piece, source, index, chunks):
                m = 1 if run is None else len(run)
                values[k:k + m] = fill if run is None else run
                k += m
            return values
        ids, offs, _, starts = self._located(piece, index, chunks)
        size = self._inner_nbytes + _shards.CRC_BYTES
        raw = self._buffer("gather", n * size)
        written: list[int] = []
        never: list[int] = []  # a never-written chunk is a run of its own
        for s, e in zip(starts, [*starts[1:], n], strict=True):
            if offs[s] < 0:
                never.append(s)
                continue
            if source.bytes(offs[s], (e - s) * size, raw[s * size:e * size]) is None:
                raise self._outside(piece, ids[s], ids[e - 1])
            written.extend(range(s, e))
        bad = _shards.crc_failures(raw, [k * size for k in written], [size] * len(written))
        if bad:
            i = ids[written[bad[0]]]
            raise self._damaged(piece, f"inner chunk {i} fails its CRC-32C check", i, i)
        values = np.ndarray((n, *self._inner_shape), dtype=self.dtype, buffer=raw,
                            strides=self._run_strides)
        values[never] = fill
        return values

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
        return (self._inner_nbytes + _shards.CRC_BYTES, *within)

    def _check(self, piece: _Piece, data: memoryview, first: int, starts: list[int],
               lengths: list[int]) -> np.ndarray:
        """Inner chunks ``first, first+1, ...`` at ``starts`` in ``data``: checked, decoded."""
        bad = _shards.crc_failures(data, starts, lengths)
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
                _BLOSC.decode(data[s:s + n - _shards.CRC_BYTES], out=out[k])
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

    def _decode(self, piece: _Piece, source: Source, index: np.ndarray, *,
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

    def _pick(self, piece: _Piece, source: Source, index: np.ndarray, *, out: np.ndarray
              ) -> None:
        """Copy the picked rows of the inner chunks a piece needs into ``out``: the chunks
        are read and checked into one buffer, then the rows are copied out at once."""
        chunk, row, where = cast(tuple[np.ndarray, np.ndarray, np.ndarray], piece.picks)
        needed = np.unique(chunk)
        values = self._gather(piece, source, index, needed)
        source_rows: tuple[Any, ...] = (np.searchsorted(needed, chunk), row, *piece.cols)
        dest_rows: tuple[Any, ...] = (where, *piece.out[1:])
        out[dest_rows] = values[source_rows]

    def _weigh(self, piece: _Piece, source: Source, index: np.ndarray, *,
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
