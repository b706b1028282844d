"""The layout of ``responses`` in nest-data stores: sharded Zarr, checked by CRC-32C.

``responses`` is stored in Zarr shards (``sharding_indexed``, index at the end) split only
along the first axis (images), each holding inner chunks of raw little-endian values (or
Blosc-compressed ones) followed by their CRC-32C; the index of chunk offsets and lengths
ends the object with its own CRC-32C.  This module knows that geometry: reading a layout
from metadata, writing a shard exactly as zarr does, checking CRC-32Cs, and mapping a
NumPy-style selection onto shards.  :mod:`nest_data._reader` reads with it.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import crc32c
import numpy as np

__all__ = ["CRC_BYTES", "EMPTY", "INDEX_ENTRY", "Layout", "bounding_box", "crc_failures",
           "crc_ok", "encode_shard", "layout_of", "product", "shard_ranges"]

EMPTY = np.uint64(2**64 - 1)  # offset and length of an inner chunk that was never written
INDEX_ENTRY = 16  # bytes per inner chunk in a shard index: offset and length, uint64 each
CRC_BYTES = 4  # a CRC-32C, little-endian


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
        return self.n_inner * INDEX_ENTRY + CRC_BYTES


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
    out = np.empty(written * (size + CRC_BYTES) + layout.index_bytes, dtype=np.uint8)
    body = out[:written * (size + CRC_BYTES)].reshape(written, size + CRC_BYTES)
    body[:, :size] = values.view(np.uint8).reshape(n_inner, size)[:written]
    crc = crc32c.crc32c
    sums = np.array([crc(body[k, :size].data) for k in range(written)], dtype="<u4")
    body[:, size:] = sums.view(np.uint8).reshape(written, CRC_BYTES)
    index = np.full((n_inner, 2), EMPTY, dtype="<u8")
    index[:written, 0] = np.arange(written, dtype=np.uint64) * np.uint64(size + CRC_BYTES)
    index[:written, 1] = size + CRC_BYTES
    tail = out[written * (size + CRC_BYTES):]
    tail[:-CRC_BYTES] = index.view(np.uint8).reshape(-1)
    tail[-CRC_BYTES:] = np.array([crc(tail[:-CRC_BYTES].data)], dtype="<u4").view(np.uint8)
    return out


def crc_ok(data: memoryview) -> bool:
    """Whether ``data`` ends with the CRC-32C (little-endian) of the bytes before it."""
    # the crc32c package releases the GIL on large buffers, so threads check in parallel
    return int(crc32c.crc32c(data[:-CRC_BYTES])).to_bytes(CRC_BYTES, "little") == data[-CRC_BYTES:]


def crc_failures(data: memoryview, starts: list[int], lengths: list[int]) -> list[int]:
    """Which of the pieces ``data[s:s+n]`` do not end with the CRC-32C of their other bytes.

    Pieces of one length that fill ``data`` back to back are checked with one CRC over all
    of them: the CRC-32C of intact pieces (each followed by its own CRC) depends only on
    their lengths (:func:`intact_crc`), and one call over half a megabyte runs without the
    GIL where thousands of small calls would hold it.  Any damage changes that CRC (missed
    with probability 2**-32, as for one piece); the damaged piece is then found one by one.
    """
    crc = crc32c.crc32c  # looked up once: the loop below runs once per piece
    if (len(set(lengths)) == 1 and starts[0] == 0 and len(data) == len(starts) * lengths[0]
            and crc(data) == intact_crc(len(starts), lengths[0])):
        return []
    return [k for k, (s, n) in enumerate(zip(starts, lengths, strict=True))
            if crc(data[s:s + n - CRC_BYTES])
            != int.from_bytes(data[s + n - CRC_BYTES:s + n], "little")]


def intact_crc(count: int, length: int) -> int:
    """The CRC-32C of ``count`` intact pieces of ``length`` bytes, each ending in its CRC."""
    known = _intact_crcs(length)
    if len(known) <= count:
        with _INTACT_LOCK:  # reader threads extend the list: one at a time
            while len(known) <= count:  # one piece more at a time, on from the last
                known.append(int(crc32c.crc32c(_intact_piece(length), known[-1])))
    return known[count]


_INTACT_LOCK = threading.Lock()


@functools.lru_cache(maxsize=16)
def _intact_crcs(length: int) -> list[int]:
    """``intact_crc(k, length)`` for ``k = 0, 1, ...`` as far as asked so far."""
    return [0]


@functools.lru_cache(maxsize=16)
def _intact_piece(length: int) -> bytes:
    zeros = bytes(length - CRC_BYTES)
    return zeros + int(crc32c.crc32c(zeros)).to_bytes(CRC_BYTES, "little")


def bounding_box(key: Any, shape: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[Any, ...]]:
    """The box of values a NumPy-style key touches, and the key to apply to that box.

    Slices (any positive step), integers and integer arrays are accepted: what dask passes
    (``from_array`` fuses a selection such as ``da[3]`` into a task as ``(3, slice(...))``).

    Examples
    --------
    >>> bounding_box((3, slice(2, 9, 3)), (10, 10))
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


def shard_ranges(sel: slice, size: int) -> list[tuple[int, int, int]]:
    """``(shard, lo, hi)`` per shard that ``sel`` (step 1) touches, in shard coordinates."""
    out = []
    start, stop = sel.start, sel.stop
    shard = start // size
    while start < stop:
        hi = min(stop, (shard + 1) * size)
        out.append((shard, start - shard * size, hi - shard * size))
        start, shard = hi, shard + 1
    return out


def product(ranges: list[list[tuple[int, int, int]]]) -> list[tuple[tuple[int, int, int], ...]]:
    combos: list[tuple[tuple[int, int, int], ...]] = [()]
    for options in ranges:
        combos = [(*c, o) for c in combos for o in options]
    return combos

