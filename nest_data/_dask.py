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

    None unless ``array`` is exactly a dask array made by :func:`dask_array`.  The tasks read
    the inner chunks that hold the positions (:meth:`ShardReader.take`).  Local files are
    read by several tasks, each over whole shards and about ``_TAKE_TASK_BYTES`` of inner
    chunks, which the scheduler runs side by side; positions out of order are then put in
    order by one last task.  A remote store is read by one task, which sends every shard's
    requests at once.  A dask selection would read every block whole.
    """
    reader = _READERS.get(getattr(array, "name", ""))
    if reader is None or tuple(array.shape) != reader.shape:
        return None
    import dask.array
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    pos = np.asarray(positions, dtype=np.int64).reshape(-1)
    name = f"take-{tokenize(array.name, pos, _TAKE_TASK_BYTES)}"
    rest = (0,) * (reader.ndim - 1)
    in_order = bool(np.all(pos[1:] >= pos[:-1]))
    order = np.arange(pos.size) if in_order else np.argsort(pos, kind="stable")
    parts = [pos]
    if reader.reads_files:
        parts = np.split(pos[order], _task_bounds(reader, pos[order]))
    layer: dict[Any, Any]
    sizes: tuple[int, ...]
    if len(parts) < 2:
        layer, sizes = {(name, 0, *rest): (reader.take, pos)}, (pos.size,)
    elif in_order:
        layer = {(name, i, *rest): (reader.take, part) for i, part in enumerate(parts)}
        sizes = tuple(part.size for part in parts)
    else:
        keys = [(f"{name}-part", i, *rest) for i in range(len(parts))]
        layer = {key: (reader.take, part) for key, part in zip(keys, parts, strict=True)}
        layer[(name, 0, *rest)] = (_reorder, keys, np.argsort(order))
        sizes = (pos.size,)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=())
    return dask.array.Array(graph, name, chunks=(sizes, *((n,) for n in reader.shape[1:])),
                            dtype=reader.dtype)


# About how many bytes of inner chunks one task of a local take reads.  Splitting costs a
# few ms (more tasks, and joining their parts), which reading 100 MB (an RSM of 1,000
# images of V1) on two threads does not win back; from a few hundred MB on, the tasks run
# side by side at up to 1.5x (benchmarks/analysis.py: 10,000 images of V1).
_TAKE_TASK_BYTES = 128 * 2**20


def _task_bounds(reader: ShardReader, ordered: np.ndarray) -> list[int]:
    """Where to cut the sorted ``ordered`` positions into tasks: at shard boundaries, once
    a task holds ``_TAKE_TASK_BYTES`` of inner chunks."""
    lay = reader.layout
    chunk = ordered // lay.inner_rows
    # inner chunks read before each position (a chunk counted at its first position)
    before = np.cumsum(np.r_[True, chunk[1:] != chunk[:-1]]) - 1 if ordered.size else chunk
    chunk_bytes = lay.inner_rows * int(np.prod(reader.shape[1:])) * reader.dtype.itemsize
    shard = ordered // lay.shard[0]
    bounds: list[int] = []
    start = 0
    for cut in (np.flatnonzero(shard[1:] != shard[:-1]) + 1).tolist():
        if (before[cut] - before[start]) * chunk_bytes >= _TAKE_TASK_BYTES:
            bounds.append(cut)
            start = cut
    return bounds


def _reorder(parts: list[np.ndarray], inverse: np.ndarray) -> np.ndarray:
    """The parts read in sorted order, back in the order the positions were given."""
    return np.concatenate(parts)[inverse]


def _weighted_block(index: np.ndarray, *, reader: ShardReader, weights: np.ndarray
                    ) -> np.ndarray:
    if not index.size:
        return np.zeros(0, dtype=np.float64)
    return reader.weighted_sum(slice(int(index[0]), int(index[-1]) + 1), weights)
