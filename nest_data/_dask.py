"""Dask arrays over a :class:`~nest_data._reader.ShardReader`, and the operations that
recognise them: reductions fused with the reads, and selections that read only what they
need."""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from nest_data._reader import ShardReader

__all__ = ["dask_array", "take_images", "weighted_sums"]

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
