"""Dask arrays over a :class:`~nest_data._reader.ShardReader`, and the operations that
recognise them: reductions fused with the reads, and selections that read only what they
need."""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from nest_data._reader import ShardReader

__all__ = ["dask_array", "stored_reader", "sum_bounds", "take_images", "weighted_sum_grid",
           "weighted_sums"]

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


def stored_reader(array: Any) -> ShardReader | None:
    """The reader behind ``array`` if it is exactly a dask array made by :func:`dask_array`
    (no selection or other operation applied), else None."""
    reader = _READERS.get(getattr(array, "name", ""))
    if reader is None or tuple(array.shape) != reader.shape:
        return None
    return reader


def weighted_sums(array: Any, weights: np.ndarray) -> Any | None:
    """``array @ weights`` over all axes but the first, fused with the reads; or None.

    None unless ``array`` is exactly a dask array made by :func:`dask_array` (no selection
    or other operation applied): each task then decodes its images one inner chunk at a
    time into a reused buffer and reduces it there (:meth:`ShardReader.weighted_sum`).
    Stored in the default chunking (one shard per dask chunk), a task reads several
    shards, about ``_SUM_TASK_BYTES`` (:func:`sum_bounds`); other chunks are kept.
    """
    reader = stored_reader(array)
    if reader is None:
        return None
    import dask.array
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    bounds = sum_bounds(reader, array.chunks[0])
    name = f"_weighted_block-{tokenize(array.name, weights, bounds)}"
    layer: dict[Any, Any] = {(name, i): (_weighted_block, reader, lo, hi, weights)
                             for i, (lo, hi) in enumerate(bounds)}
    graph = HighLevelGraph.from_collections(name, layer, dependencies=())
    return dask.array.Array(graph, name, chunks=(tuple(hi - lo for lo, hi in bounds),),
                            dtype=np.float64)


def weighted_sum_grid(cells: Mapping[tuple[int, int], Any], shape: tuple[int, int],
                      n_rows: int) -> Any:
    """A ``shape + (n_rows,)`` float64 dask array of weighted sums, built as one layer.

    Each cell is either ``(array, weights)`` (``array`` exactly a stored dask array: its
    weighted sums are read as :func:`weighted_sums` reads them) or any dask array of
    ``n_rows`` values (its chunks are joined).  Stored entries read from local files and
    smaller than ``_SUM_TASK_BYTES`` share tasks: consecutive columns whose entries are all
    such are grouped until a task reads about ``_SUM_TASK_BYTES`` (one chunk along the
    second axis per group); a larger entry is read in tasks of about that size, joined by
    one more.  A task costs a few ms on a busy cluster whatever it reads, and a graph with
    a task or less per entry, in one layer, is quick to build and to schedule.
    """
    import dask.array
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    plans: dict[tuple[int, int], Any] = {}  # cell -> _Sums, or a dask array to join
    others: list[Any] = []
    token: list[Any] = []
    for (i, j), value in sorted(cells.items()):
        if isinstance(value, tuple):
            array, weights = value
            reader = stored_reader(array)
            if reader is None:
                raise ValueError(f"cell {(i, j)} is not a stored array; pass its dask array")
            plans[i, j] = _Sums(reader, tuple(sum_bounds(reader, array.chunks[0])), weights)
            token.append((i, j, array.name, weights))
        else:
            plans[i, j] = value
            others.append(value)
            token.append((i, j, value.name))
    name = f"roi-sums-{tokenize(token)}"
    layer: dict[Any, Any] = {}
    groups = _column_groups(plans, shape)
    for g, columns in enumerate(groups):
        for i in range(shape[0]):
            if len(columns) > 1 or _small_local(plans[i, columns[0]]):
                layer[(name, i, g, 0)] = (_sums_block, [plans[i, j] for j in columns])
                continue
            plan = plans[i, columns[0]]
            if not isinstance(plan, _Sums):
                layer[(name, i, g, 0)] = (_joined_cell, list(plan.__dask_keys__()))
                continue
            tasks = [(_weighted_block, plan.reader, lo, hi, plan.weights)
                     for lo, hi in plan.bounds]
            if len(tasks) == 1:
                layer[(name, i, g, 0)] = (_cell, tasks[0])
                continue
            keys = [(f"{name}-part", i, g, k) for k in range(len(tasks))]
            layer.update(zip(keys, tasks, strict=True))
            layer[(name, i, g, 0)] = (_joined_cell, keys)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=others)
    return dask.array.Array(graph, name, chunks=((1,) * shape[0],
                                                 tuple(len(c) for c in groups), (n_rows,)),
                            dtype=np.float64)


@dataclass(frozen=True)
class _Sums:
    """The weighted sums of one stored entry: its reader, task bounds and weights."""

    reader: ShardReader
    bounds: tuple[tuple[int, int], ...]
    weights: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.reader.shape)) * self.reader.dtype.itemsize

    def read(self) -> np.ndarray:
        """All the sums, read in this task."""
        return np.concatenate([self.reader.weighted_sum(slice(lo, hi), self.weights)
                               for lo, hi in self.bounds])


def _small_local(plan: Any) -> bool:
    """Whether a cell is a stored entry read from local files, smaller than a task."""
    return (isinstance(plan, _Sums) and plan.reader.reads_files
            and plan.nbytes < _SUM_TASK_BYTES)


def _column_groups(plans: Mapping[tuple[int, int], Any], shape: tuple[int, int]
                   ) -> list[list[int]]:
    """Consecutive columns whose cells are all small local entries, grouped until the
    largest cell of each column adds up to ``_SUM_TASK_BYTES``; every other column alone."""
    groups: list[list[int]] = []
    size = 0
    for j in range(shape[1]):
        column = [plans[i, j] for i in range(shape[0])]
        if not all(_small_local(p) for p in column):
            groups.append([j])
            size = _SUM_TASK_BYTES  # the next column starts a group
            continue
        largest = max(p.nbytes for p in column)
        if not groups or size + largest > _SUM_TASK_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(j)
        size += largest
    return groups


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
    reader = stored_reader(array)
    if reader is None:
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


def sum_bounds(reader: ShardReader, chunks: tuple[int, ...]) -> list[tuple[int, int]]:
    """The image ranges of the tasks of a fused sum over an array chunked as ``chunks``.

    In the default local chunking (one stored shard per dask chunk), consecutive chunks are
    joined until a task holds at least ``_SUM_TASK_BYTES`` of values; any other chunking (a
    remote store's, which already holds several shards, or the user's ``chunks=``) is kept.
    """
    ends = np.cumsum(chunks).tolist()
    starts = [0, *ends[:-1]]
    shard = reader.layout.shard[0]
    if any(n != shard for n in chunks[:-1]):
        return list(zip(starts, ends, strict=True))
    row_bytes = int(np.prod(reader.shape[1:])) * reader.dtype.itemsize
    per_task = max(1, _SUM_TASK_BYTES // max(1, shard * row_bytes))
    return [(lo, min(lo + per_task * shard, reader.shape[0]))
            for lo in range(0, reader.shape[0], per_task * shard)]


# About how many bytes of values one task of a fused local sum reads: enough that the cost
# of a task (scheduling it, and on a cluster sending it and unpickling its reader) is small
# against reading it; the reads stay in a reused buffer of a few inner chunks, so a task's
# memory does not grow with it.
_SUM_TASK_BYTES = 32 * 2**20


def _weighted_block(reader: ShardReader, lo: int, hi: int, weights: np.ndarray
                   ) -> np.ndarray:
    """Weighted sums of images ``lo:hi``."""
    return reader.weighted_sum(slice(lo, hi), weights)


def _cell(values: np.ndarray) -> np.ndarray:
    """One cell of :func:`weighted_sum_grid` (a block of shape ``(1, 1, n)``)."""
    return values.reshape(1, 1, -1)


def _sums_block(cells: list[Any]) -> np.ndarray:
    """Several cells of :func:`weighted_sum_grid` in one task (a block ``(1, k, n)``): the
    sums of each stored entry, or the chunks of another array, joined."""
    return np.stack([c.read() if isinstance(c, _Sums)
                     else np.concatenate([np.asarray(p).reshape(-1) for p in c])
                     for c in cells])[None]


def _joined_cell(parts: list[np.ndarray]) -> np.ndarray:
    """The parts of one cell of :func:`weighted_sum_grid`, joined."""
    return np.concatenate([np.asarray(p).reshape(-1) for p in parts]).reshape(1, 1, -1)
