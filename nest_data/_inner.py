"""The inner chunks of a ``responses`` shard: found through the shard's checked index,
checked against their CRC-32C, and decoded into place.

:class:`~nest_data._reader.ShardReader` plans which shards and inner chunks a read needs and
fetches their bytes (a :class:`~nest_data._sources.Source`); :class:`InnerChunks` turns those
bytes into values, or into an error that names the object and the images: an index or an
inner chunk that fails its CRC-32C, an index pointing outside the object, a length the
layout cannot have.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from numcodecs import Blosc

from nest_data import _shards
from nest_data._shards import Layout
from nest_data._sources import Source
from nest_data.errors import ChecksumError, StoreFormatError

__all__ = ["InnerChunks", "Piece"]

_RUN_BYTES = 512 * 2**10  # read and checked at once locally: fits the CPU's L2 cache
_BUFFERS = threading.local()  # InnerChunks.buffer


@dataclass
class Piece:
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


class InnerChunks:
    """Checking and decoding the inner chunks of one array's shards.

    Parameters
    ----------
    url : str
        The store's URL, for messages.
    layout : Layout
        The array's geometry, from :func:`~nest_data._shards.layout_of`.
    """

    def __init__(self, url: str, layout: Layout) -> None:
        self.url = url
        self.layout = layout
        self.shape = layout.shape
        self.dtype = layout.dtype

    @staticmethod
    def buffer(name: str, size: int) -> memoryview:
        """A reusable byte buffer of at least ``size`` bytes, one per name and thread.

        Shared by every array's reader: a thread reads one piece at a time, so a worker
        holds one set of buffers however many entries its tasks read (per reader, memory
        grew with the number of entries a worker had seen).
        """
        buf = getattr(_BUFFERS, name, None)
        if buf is None or len(buf) < size:
            buf = bytearray(max(size, 1))
            setattr(_BUFFERS, name, buf)
        return memoryview(buf)[:size]

    def _where(self, piece: Piece, first: int | None = None, last: int | None = None) -> str:
        inner = self.layout.inner_rows
        lo = piece.shard_row + (first or 0) * inner
        hi = piece.shard_row + ((last + 1) * inner if last is not None else self.layout.shard[0])
        hi = min(hi, self.shape[0])
        return f"object {piece.key} of {self.url} (images {lo}-{hi - 1})"

    def _damaged(self, piece: Piece, what: str, first: int | None = None,
                 last: int | None = None) -> ChecksumError:
        return ChecksumError(
            f"{self._where(piece, first, last)}: {what}. Its bytes changed after the store "
            "was written (on disk, in transit or in a cache); nothing was read in its place. "
            "Re-mirror or re-convert this entry, and run `nest-data verify` on its root.")

    def index(self, piece: Piece, tail: memoryview) -> np.ndarray:
        """The shard index (offset, length per inner chunk), checked against its CRC-32C."""
        n = self.layout.n_inner
        if len(tail) != self.layout.index_bytes:
            raise self._damaged(piece, f"it is too short to hold its index ({len(tail)} "
                                       f"bytes at its end, {self.layout.index_bytes} needed)")
        body = tail[:-_shards.CRC_BYTES]
        if not _shards.crc_ok(tail):
            raise self._damaged(piece, "its index of inner chunks fails its CRC-32C check")
        return np.frombuffer(body, dtype="<u8").reshape(n, 2)

    def span(self, piece: Piece, index: np.ndarray, size: int | None) -> tuple[int, int]:
        """The byte range holding inner chunks ``first..last`` of a piece."""
        used = index[piece.first:piece.last + 1]
        used = used[used[:, 0] != _shards.EMPTY]
        if not len(used):
            return 0, 0
        lo, hi = int(used[:, 0].min()), int((used[:, 0] + used[:, 1]).max())
        if size is not None and hi > size:
            raise self._damaged(piece, f"its index points past its end ({hi} > {size} bytes)")
        return lo, hi

    def _located(self, piece: Piece, index: np.ndarray, chunks: np.ndarray
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

    def _outside(self, piece: Piece, first: int, last: int) -> ChecksumError:
        return self._damaged(piece, f"its index places inner chunks {first}-{last} outside "
                                    "the object", first, last)

    def _runs(self, piece: Piece, source: Source, index: np.ndarray, chunks: np.ndarray
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

    def _gather(self, piece: Piece, source: Source, index: np.ndarray, chunks: np.ndarray
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
        raw = self.buffer("gather", n * size)
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

    def _check(self, piece: Piece, data: memoryview, first: int, starts: list[int],
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

    def _span_rows(self, piece: Piece, i: int, m: int) -> tuple[slice, slice]:
        """Rows of inner chunks ``i..i+m-1`` that a piece needs: within them, and in the result."""
        inner = self.layout.inner_rows
        first = i * inner
        lo, hi = max(piece.rows.start, first), min(piece.rows.stop, first + m * inner)
        shift = piece.out[0].start - piece.rows.start
        return slice(lo - first, hi - first), slice(lo + shift, hi + shift)

    def decode(self, piece: Piece, source: Source, index: np.ndarray, *,
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

    def pick(self, piece: Piece, source: Source, index: np.ndarray, *, out: np.ndarray
              ) -> None:
        """Copy the picked rows of the inner chunks a piece needs into ``out``: the chunks
        are read and checked into one buffer, then the rows are copied out at once."""
        chunk, row, where = cast(tuple[np.ndarray, np.ndarray, np.ndarray], piece.picks)
        needed = np.unique(chunk)
        values = self._gather(piece, source, index, needed)
        source_rows: tuple[Any, ...] = (np.searchsorted(needed, chunk), row, *piece.cols)
        dest_rows: tuple[Any, ...] = (where, *piece.out[1:])
        out[dest_rows] = values[source_rows]

    def weigh(self, piece: Piece, source: Source, index: np.ndarray, *,
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
        return np.frombuffer(self.buffer("scratch", nbytes),
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
