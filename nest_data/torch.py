"""PyTorch datasets over stored responses: samples and batches for a ``DataLoader``.

Two datasets read the same entries, through the same checked reader as
:func:`nest_data.open` (every inner chunk against its CRC-32C, a missing object an error):

- :class:`ResponseDataset`, map-style: ``dataset[i]`` is one image's sample, and a
  ``DataLoader`` over it batches with its own sampler (``shuffle=True``,
  ``DistributedSampler``).  A batch of indices is read at once (``__getitems__``): one read
  per stored shard it touches, not one per image.
- :class:`ResponseBatches`, iterable: yields whole batches in an order that stays cheap on
  sharded stores (the stored shards are shuffled, then the images inside a buffer of a few
  shards), split between ``DataLoader`` workers and ``torch.distributed`` ranks so that
  every image is read once per epoch.  Use it with ``DataLoader(ds, batch_size=None)``.

A sample is a dict: ``"responses"`` (float32 tensor of the image's row: ``(voxel,)`` for
fMRI, ``(repetition, channel, time)`` for EEG), ``"image"`` (the image's label, str),
``"index"`` (its position in its entry, int), ``"entry"`` (the entry's name, when the dataset
concatenates several entries) and ``"pixels"`` (uint8 tensor, when pixels are given).  A
batch holds the same keys with a leading batch dimension (``"image"`` and ``"entry"`` lists of
str, ``"index"`` an int64 tensor): what ``default_collate`` makes of samples.

Several entries combine two ways (``combine=``):

- ``"align"`` (several subjects or ROIs of one image set): a sample holds every entry's
  responses to the same image, ``"responses"`` a dict of tensors keyed by entry name.  Not
  concatenated: entries have their own voxels (and EEG its own shape), and a model with one
  readout per subject needs to know which values are whose; ``torch.cat(list(d.values()),
  -1)`` concatenates them in one line, while splitting a concatenation needs the sizes.
- ``"concat"`` (entries with rows of one shape, e.g. one subject and ROI over several image
  sets): one longer image axis; ``"entry"`` names each sample's entry and ``"index"`` is its
  position there.

Needs torch (``pip install 'nest-data[encode]'``); this module imports it.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import xarray as xr

from nest_data._dask import stored_reader
from nest_data.errors import InputError

try:
    import torch
    from torch.utils.data import Dataset, IterableDataset, get_worker_info
except ImportError as exc:  # pragma: no cover - the encode extra is missing
    raise ImportError("nest_data.torch needs torch: pip install 'nest-data[encode]'"
                      ) from exc

logger = logging.getLogger("nest_data")

__all__ = ["COMBINE", "ResponseBatches", "ResponseDataset"]

#: How :class:`ResponseDataset` and :class:`ResponseBatches` combine several entries.
COMBINE = ("align", "concat")
#: Positions closer than this are read as one slice of a pixel array (h5py, zarr, memmap).
_PIXEL_GAP = 64

Sample = dict[str, Any]


class _Entries:
    """The entries (and pixels) a dataset reads, and how to read rows of them.

    Positions are *dataset positions*: image positions of the first entry for one entry or
    ``"align"``, positions along the entries laid end to end for ``"concat"``.
    """

    def __init__(self, responses: Any, pixels: Any, combine: str) -> None:
        if combine not in COMBINE:
            raise InputError(f"combine={combine!r} is not one of {COMBINE}: 'align' gives each "
                             "image every entry's responses (entries of one image set), "
                             "'concat' lays the entries end to end along images")
        arrays = _named_entries(responses)
        self.names = list(arrays)
        self.combine = combine if len(arrays) > 1 else "single"
        self.data = [arrays[name].data for name in self.names]
        self.readers = [stored_reader(d) for d in self.data]
        self.labels = [_labels(arrays[name]) for name in self.names]
        self.sizes = [len(labels) for labels in self.labels]
        self.rows = [self.rows_of(i) for i in range(len(self.names))]
        self.shard_rows = [self.block_rows_of(i) for i in range(len(self.names))]
        self.offsets = np.cumsum([0, *self.sizes]) if self.combine == "concat" else None
        self.where: list[np.ndarray | None] = [None] * len(self.names)
        if self.combine == "align":
            self._align()
        if self.combine == "concat":
            shapes = {name: tuple(d.shape[1:]) for name, d in zip(self.names, self.data,
                                                                 strict=True)}
            if len(set(shapes.values())) > 1:
                raise InputError(f"combine='concat' needs rows of one shape, but the entries' "
                                 f"rows are {shapes}; give entries of one subject and ROI (or "
                                 "one EEG subject), or combine='align' for entries of one "
                                 "image set")
        self.n = int(self.offsets[-1]) if self.offsets is not None else self.sizes[0]
        self.pixels = _checked_pixels(pixels, self)
        self._pid = os.getpid()

    def rows_of(self, i: int) -> tuple[int, ...]:
        """The shape of one row of entry ``i``."""
        return tuple(int(n) for n in self.data[i].shape[1:])

    def block_rows_of(self, i: int) -> int:
        """Images per stored shard of entry ``i`` (a dask chunk, or all, when not stored)."""
        reader = self.readers[i]
        if reader is not None:
            return int(reader.layout.shard[0])
        chunks = getattr(self.data[i], "chunks", None)
        if chunks is not None and chunks and isinstance(chunks[0], tuple):
            return max(1, int(chunks[0][0]))
        return max(1, self.sizes[i])

    def _align(self) -> None:
        """Positions of the first entry's images in each other entry, by label."""
        first = self.labels[0]
        for i in range(1, len(self.names)):
            labels = self.labels[i]
            if len(labels) == len(first) and np.array_equal(labels, first):
                continue
            lookup = {label: k for k, label in enumerate(labels.tolist())}
            missing = [label for label in first.tolist() if label not in lookup]
            if missing or len(labels) != len(first):
                raise InputError(
                    f"combine='align' needs every entry to hold the same images, but "
                    f"{self.names[i]!r} has {len(labels)} images and {self.names[0]!r} has "
                    f"{len(first)} ({len(missing)} of the latter's missing, e.g. "
                    f"{missing[:3]}); select the shared images of each entry first "
                    "(nest_data.select_images), or combine='concat' to lay them end to end")
            self.where[i] = np.array([lookup[label] for label in first.tolist()],
                                     dtype=np.int64)

    # -- blocks --------------------------------------------------------------------------

    def blocks(self) -> list[tuple[int, int]]:
        """Dataset positions ``(start, stop)`` of each stored shard (of the first entry for
        ``"align"``); a block never spans two entries."""
        starts = [0] if self.offsets is None else self.offsets[:-1].tolist()
        count = 1 if self.offsets is None else len(self.names)
        out = []
        for i in range(count):
            rows, base = self.shard_rows[i], int(starts[i])
            out += [(base + lo, base + min(lo + rows, self.sizes[i]))
                    for lo in range(0, self.sizes[i], rows)]
        return out

    # -- reading -------------------------------------------------------------------------

    def read(self, positions: np.ndarray) -> Sample:
        """The batch of ``positions`` (dataset positions, any order), as numpy and lists."""
        pos = np.asarray(positions, dtype=np.int64)
        self._own_process()
        batch: Sample = {}
        if self.combine == "concat":
            assert self.offsets is not None
            which = np.searchsorted(self.offsets, pos, side="right") - 1
            local = pos - self.offsets[which]
            values = np.empty((pos.size, *self.rows[0]), dtype=np.float32)
            for i in np.unique(which).tolist():
                mask = which == i
                values[mask] = self._rows(i, local[mask])
            batch["responses"] = values
            batch["image"] = [str(self.labels[i][k]) for i, k in
                              zip(which.tolist(), local.tolist(), strict=True)]
            batch["index"] = local
            batch["entry"] = [self.names[i] for i in which.tolist()]
        else:
            if self.combine == "align":
                batch["responses"] = {name: self._rows(i, pos)
                                      for i, name in enumerate(self.names)}
            else:
                batch["responses"] = self._rows(0, pos)
            batch["image"] = self.labels[0][pos].tolist()
            batch["index"] = pos
        if self.pixels is not None:
            batch["pixels"] = self._pixels(pos, batch)
        return batch

    def _own_process(self) -> None:
        """In a process forked from the one that opened the entries (a ``DataLoader``
        worker), open them again: a remote store's connections belong to its parent's event
        loop.  A pickled copy opens new ones, as on a dask cluster."""
        if self._pid != os.getpid():
            self.readers, self.data = pickle.loads(pickle.dumps((self.readers, self.data)))
            self._pid = os.getpid()

    def _rows(self, i: int, positions: np.ndarray) -> np.ndarray:
        """Rows of entry ``i`` (its own positions, after aligning), float32, checked."""
        where = self.where[i]
        pos = positions if where is None else where[positions]
        reader = self.readers[i]
        if reader is not None:
            return np.asarray(reader.take(pos), dtype=np.float32)
        # not exactly the stored array (a selection, a computed array): its own graph, which
        # reads through the same reader, in this process (no dask threads in a worker)
        order = np.argsort(pos, kind="stable")
        data = self.data[i][pos[order]]
        if hasattr(data, "compute"):
            data = data.compute(scheduler="synchronous")
        out = np.empty((pos.size, *self.rows[i]), dtype=np.float32)
        out[order] = np.asarray(data, dtype=np.float32)
        return out

    def _pixels(self, positions: np.ndarray, batch: Sample) -> np.ndarray:
        """Pixels of the images at ``positions``, read a run of near positions at a time."""
        pixels = self.pixels
        assert pixels is not None
        if self.combine == "concat":
            entries = np.array([self.names.index(name) for name in batch["entry"]])
            out = np.empty((positions.size, *pixels[self.names[0]].shape[1:]), dtype=np.uint8)
            for i in np.unique(entries).tolist():
                mask = entries == i
                out[mask] = _take(pixels[self.names[i]], batch["index"][mask])
            return out
        return _take(pixels, positions)


def _take(array: Any, positions: np.ndarray) -> np.ndarray:
    """``array[positions]`` of an array indexable by slices (numpy, h5py, zarr), reading
    each run of near positions as one slice."""
    order = np.argsort(positions, kind="stable")
    ordered = positions[order]
    out = np.empty((positions.size, *array.shape[1:]), dtype=np.uint8)
    cuts = np.flatnonzero(np.diff(ordered) > _PIXEL_GAP) + 1
    for run, idx in zip(np.split(ordered, cuts), np.split(order, cuts), strict=True):
        if run.size:
            lo, hi = int(run[0]), int(run[-1]) + 1
            out[idx] = np.asarray(array[lo:hi])[run - lo]
    return out


def _named_entries(responses: Any) -> dict[str, xr.DataArray]:
    """``{name: DataArray with image first}`` of what the user gave, checked."""
    fix = ("give a DataArray from nest_data.open, a dict of name -> DataArray, a list of "
           "DataArrays, or a DataTree from nest_data.open_many")
    if isinstance(responses, xr.DataArray):
        named = {str(responses.name or "responses"): responses}
    elif isinstance(responses, xr.DataTree):
        named = {node.path.lstrip("/"): node.dataset["responses"]
                 for node in responses.subtree if "responses" in node.dataset}
    elif isinstance(responses, Mapping):
        named = {str(k): v for k, v in responses.items()}
    elif isinstance(responses, Sequence) and not isinstance(responses, (str, bytes)):
        named = {}
        for da in responses:
            name = _entry_name(da)
            if name in named:
                raise InputError(f"two of the entries are both {name!r}; give each entry "
                                 "once, or a dict of distinct names -> DataArray")
            named[name] = da
    else:
        raise InputError(f"responses: got {type(responses).__name__}; {fix}")
    if not named:
        raise InputError(f"responses: no entries given; {fix}")
    for name, da in named.items():
        if not isinstance(da, xr.DataArray) or "image" not in da.dims:
            what = (f"dims {da.dims}" if isinstance(da, xr.DataArray)
                    else type(da).__name__)
            raise InputError(f"entry {name!r} is {what}, not responses with an 'image' "
                             f"dimension; {fix}")
        if da.sizes["image"] == 0:
            raise InputError(f"entry {name!r} holds no images; give entries with at least "
                             "one image")
    return {name: da.transpose("image", ...) for name, da in named.items()}


def _entry_name(da: Any) -> str:
    """An entry's place in the collection (``fmri/nsd/fwrf/things/sub-01/V1``), from its
    attributes."""
    attrs = getattr(da, "attrs", {})
    keys = ("modality", "train_dataset", "model", "imageset", "subject")
    if not isinstance(da, xr.DataArray) or any(k not in attrs for k in keys):
        raise InputError("a list of entries is named by their attributes (modality, "
                         "train_dataset, model, imageset, subject, roi), which "
                         f"{type(da).__name__} {getattr(da, 'name', '')!r} lacks; give a dict "
                         "of name -> DataArray instead")
    parts = [str(attrs[k]) for k in keys[:-1]] + [f"sub-{int(attrs['subject']):02d}"]
    return "/".join(parts + ([str(attrs["roi"])] if attrs.get("roi") else []))


def _labels(da: xr.DataArray) -> np.ndarray:
    """Image labels of an entry, as str: ``image_id`` when it has one (responses to images of
    your own), else the ``image`` coordinate."""
    name: Hashable = "image_id" if "image_id" in da.coords else "image"
    if name not in da.coords:
        return np.arange(da.sizes["image"]).astype(str)
    return np.asarray(da.coords[name].values).astype(str)


def _checked_pixels(pixels: Any, entries: _Entries) -> Any:
    """``pixels`` if it fits the entries (one uint8 image per image), else InputError."""
    if pixels is None:
        return None
    if entries.combine == "concat":
        if not isinstance(pixels, Mapping) or sorted(map(str, pixels)) != sorted(entries.names):
            got = sorted(map(str, pixels)) if isinstance(pixels, Mapping) else type(
                pixels).__name__
            raise InputError(f"with combine='concat', pixels must be a dict of entry name -> "
                             f"pixel array, one per entry {entries.names}; got {got}")
        for i, name in enumerate(entries.names):
            _check_pixel_array(pixels[name], entries.sizes[i], name)
        return {str(k): v for k, v in pixels.items()}
    _check_pixel_array(pixels, entries.sizes[0], entries.names[0])
    return pixels


def _check_pixel_array(array: Any, n: int, name: str) -> None:
    shape, dtype = getattr(array, "shape", None), getattr(array, "dtype", None)
    if shape is None or dtype is None or len(shape) < 2:
        raise InputError(f"pixels for {name!r}: got {type(array).__name__}; give an array "
                         "(numpy, memmap, h5py dataset or zarr array) of uint8 images, one per "
                         "image of the entry, in its order: (N, H, W, 3) or (N, 3, H, W)")
    if int(shape[0]) != n:
        raise InputError(f"pixels for {name!r} hold {shape[0]} images but the entry has {n}; "
                         "give one image per image of the entry, in its order (select the "
                         "entry's images with nest_data.select_images to match)")
    if np.dtype(dtype) != np.uint8:
        raise InputError(f"pixels for {name!r} are {dtype}, not uint8; convert them once, "
                         "e.g. (x * 255).round().astype('uint8') for floats in [0, 1]")


def _tensors(batch: Sample) -> Sample:
    """Numpy values of a batch (or sample) as tensors; labels stay lists (or str)."""
    out: Sample = {}
    for key, value in batch.items():
        if key == "responses" and isinstance(value, dict):
            out[key] = {k: torch.from_numpy(v) for k, v in value.items()}
        elif key in ("responses", "pixels", "index"):
            out[key] = torch.from_numpy(np.ascontiguousarray(value))
        else:
            out[key] = value
    return out


def _sample(batch: Sample, k: int) -> Sample:
    """Sample ``k`` of a batch read by :meth:`_Entries.read`."""
    out: Sample = {}
    for key, value in batch.items():
        if key == "responses" and isinstance(value, dict):
            out[key] = {name: torch.from_numpy(v[k]) for name, v in value.items()}
        elif key in ("responses", "pixels"):
            out[key] = torch.from_numpy(value[k])
        elif key == "index":
            out[key] = int(value[k])
        else:
            out[key] = value[k]
    return out


class ResponseDataset(Dataset[Sample]):
    """Stored responses as a map-style dataset: ``dataset[i]`` is image ``i``'s sample.

    Reads go through the checked reader of :func:`nest_data.open`, local or remote (with
    the chunk cache when the entries were opened with ``cache=True``).  A ``DataLoader``
    reads each batch of indices at once (``__getitems__``): per stored shard, the inner
    chunks holding its images, remotely all at once.  Shuffled access reads a whole inner
    chunk (up to 128 KB) per image; for epochs over large entries,
    :class:`ResponseBatches` reads each shard once.

    Parameters
    ----------
    responses : DataArray, dict of DataArray, list of DataArray, or DataTree
        The entries, as :func:`nest_data.open` / :func:`nest_data.open_many` return them
        (any selection of them works; an exact stored entry reads fastest).  A dict names
        them; a list is named by their attributes (``fmri/nsd/fwrf/nsd/sub-01/V1``); a
        DataTree by its node paths (``sub-01/V1``).
    pixels : array or dict of array, optional
        uint8 images, one per image of the entry in its order (numpy, memmap, h5py dataset
        or zarr array; read by slices); with ``combine="concat"``, a dict of entry name ->
        array.  Samples then hold ``"pixels"``.
    combine : {"align", "concat"}
        Several entries: ``"align"`` gives each image every entry's responses (a dict keyed
        by entry name; the entries must hold the same images, matched by label);
        ``"concat"`` lays them end to end along images (rows of one shape), and samples name
        their ``"entry"``.

    Raises
    ------
    InputError
        Entries without an ``image`` dimension, entries that do not align or concatenate,
        pixels of another count or dtype, an index out of range.

    Examples
    --------
    >>> import nest_data
    >>> from torch.utils.data import DataLoader
    >>> from nest_data.torch import ResponseDataset
    >>> da = nest_data.open(imageset="things", subject=1, roi="V1", location="demo")
    >>> ds = ResponseDataset(da)
    >>> sample = ds[3]
    >>> sample["responses"].shape, sample["image"], sample["index"]
    (torch.Size([1350]), '3', 3)
    >>> batch = next(iter(DataLoader(ds, batch_size=8, shuffle=True)))
    >>> batch["responses"].shape, len(batch["image"])
    (torch.Size([8, 1350]), 8)
    """

    def __init__(self, responses: Any, *, pixels: Any = None,
                 combine: Literal["align", "concat"] = "align") -> None:
        self.entries = _Entries(responses, pixels, combine)

    def __len__(self) -> int:
        return self.entries.n

    def __repr__(self) -> str:
        return (f"ResponseDataset({len(self)} images of {len(self.entries.names)} "
                f"entr{'y' if len(self.entries.names) == 1 else 'ies'})")

    def __getitem__(self, index: int) -> Sample:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Sample]:
        """The samples of ``indices``, read at once (what a ``DataLoader`` asks for)."""
        pos = np.array([_position(i, self.entries.n) for i in indices], dtype=np.int64)
        batch = self.entries.read(pos)
        return [_sample(batch, k) for k in range(pos.size)]


def _position(index: Any, n: int) -> int:
    """A sample index as a position in ``0..n-1`` (negative ones count from the end)."""
    if isinstance(index, torch.Tensor) and index.ndim == 0:
        index = int(index)
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise InputError(f"index {index!r}: give an int (a DataLoader's sampler does)")
    if not -n <= index < n:
        raise InputError(f"index {index} is out of range for {n} images; give 0 to {n - 1} "
                         "(or negative from the end)")
    return int(index) % n


class ResponseBatches(IterableDataset[Sample]):
    """Stored responses as an iterable of whole batches, shuffled cheaply, split across
    ``DataLoader`` workers and ``torch.distributed`` ranks.

    Use it with ``DataLoader(ds, batch_size=None)`` (the batches are already made).  Each
    epoch:

    1. the stored shards (about 8 MB each) are put in a random order, seeded by ``seed`` and
       the epoch (:meth:`set_epoch`), the same in every rank and worker;
    2. the images of that order are cut into one contiguous share per rank (``rank`` of
       ``world_size``), each share into batches, and the batches into one contiguous run
       per ``DataLoader`` worker;
    3. each worker reads ``buffer_shards`` shards' worth of its images at a time (the inner
       chunks that hold them, remote shards all at once), shuffles them in memory and
       yields batches of ``batch_size``.

    So every image is read once per epoch, each shard about once (twice where a share ends
    inside it), and a worker holds ``buffer_shards`` shards in memory.  Without
    ``drop_last``, no image is dropped or repeated: shares differ by at most one image, so
    ranks may yield one batch more than others (``len`` is this rank's count); DDP then needs
    ``torch.distributed.algorithms.Join`` for uneven inputs.  With ``drop_last=True`` every
    rank yields the same number of full batches, and the images past the last whole batch of
    every rank (fewer than ``world_size * batch_size``, the end of that epoch's order) are
    left out of that epoch.  ``DistributedSampler``'s padding (repeating images) is not
    offered: an image is never seen twice in an epoch.

    Parameters
    ----------
    responses : DataArray, dict of DataArray, list of DataArray, or DataTree
        The entries, as :class:`ResponseDataset` takes them.
    batch_size : int
        Images per batch (the last batch of a rank may be smaller, unless ``drop_last``).
    pixels : array or dict of array, optional
        uint8 images, as :class:`ResponseDataset` takes them.
    combine : {"align", "concat"}
        How several entries combine, as in :class:`ResponseDataset`.
    shuffle : bool
        Shuffle shards, and images inside the buffer; ``False`` reads in stored order.
    seed : int
        Seed of the shuffles (with the epoch).
    buffer_shards : int
        Shards a worker reads and shuffles together: more mixes better, and costs one
        shard's memory (about 8 MB, plus pixels) each.
    drop_last : bool
        Yield only full batches, the same number on every rank (see above).
    rank, world_size : int, optional
        This process's place among the ranks; default ``torch.distributed``'s when it is
        initialised, else the ``RANK`` and ``WORLD_SIZE`` environment variables (set by
        ``torchrun``), else one process.  Read when the dataset is made.

    Raises
    ------
    InputError
        Bad sizes or seeds, a rank outside ``world_size``, and what :class:`ResponseDataset`
        refuses.

    Examples
    --------
    >>> import nest_data
    >>> from torch.utils.data import DataLoader
    >>> from nest_data.torch import ResponseBatches
    >>> da = nest_data.open(imageset="things", subject=1, roi="V1", location="demo")
    >>> ds = ResponseBatches(da, batch_size=10, seed=1)
    >>> loader = DataLoader(ds, batch_size=None)
    >>> ds.set_epoch(0)
    >>> [batch["responses"].shape[0] for batch in loader]
    [10, 10, 4]
    >>> sorted(int(i) for batch in loader for i in batch["index"]) == list(range(24))
    True
    """

    def __init__(self, responses: Any, *, batch_size: int, pixels: Any = None,
                 combine: Literal["align", "concat"] = "align", shuffle: bool = True,
                 seed: int = 0, buffer_shards: int = 4, drop_last: bool = False,
                 rank: int | None = None, world_size: int | None = None) -> None:
        _check_count("batch_size", batch_size, 1)
        _check_count("buffer_shards", buffer_shards, 1)
        _check_count("seed", seed, 0)
        self.entries = _Entries(responses, pixels, combine)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.buffer_shards = int(buffer_shards)
        self.drop_last = bool(drop_last)
        self.rank, self.world_size = _rank_and_size(rank, world_size)
        # shared memory, so set_epoch reaches persistent DataLoader workers too
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def __repr__(self) -> str:
        return (f"ResponseBatches({self.entries.n} images, batch_size={self.batch_size}, "
                f"rank {self.rank} of {self.world_size}, epoch {self.epoch})")

    @property
    def epoch(self) -> int:
        """The epoch whose order the next pass yields."""
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` from the next pass on (call it before each epoch, as
        with ``DistributedSampler``; persistent workers see it too).

        Parameters
        ----------
        epoch : int
            0 or more.
        """
        _check_count("epoch", epoch, 0)
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        """Batches this rank yields per epoch (all its workers together)."""
        share = self._rank_share(self.rank)
        return (share[1] - share[0]) // self.batch_size if self.drop_last else -(
            -(share[1] - share[0]) // self.batch_size)

    def _rank_share(self, rank: int) -> tuple[int, int]:
        """Which part ``(start, stop)`` of an epoch's order rank ``rank`` reads."""
        n, size = self.entries.n, self.world_size
        if self.drop_last:
            per = n // (size * self.batch_size) * self.batch_size
            return rank * per, (rank + 1) * per
        q, r = divmod(n, size)
        start = rank * q + min(rank, r)
        return start, start + q + (rank < r)

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's order of dataset positions before the buffer shuffle: its shards in
        random order (or stored order without ``shuffle``).

        Parameters
        ----------
        epoch : int
            The epoch.

        Returns
        -------
        numpy.ndarray
            Every position once, int64.
        """
        blocks = self.entries.blocks()
        order = (np.random.default_rng([self.seed, epoch]).permutation(len(blocks))
                 if self.shuffle else np.arange(len(blocks)))
        return np.concatenate([np.arange(*blocks[k]) for k in order.tolist()])

    def plan(self, epoch: int, worker: int = 0, workers: int = 1) -> list[np.ndarray]:
        """The positions one worker of this rank reads in ``epoch``, one array per buffer
        (in read order, before shuffling inside it).

        Parameters
        ----------
        epoch : int
            The epoch.
        worker, workers : int
            This ``DataLoader`` worker's id and their number.

        Returns
        -------
        list of numpy.ndarray
        """
        lo, hi = self._rank_share(self.rank)
        batches = -(-(hi - lo) // self.batch_size)
        first, last = worker * batches // workers, (worker + 1) * batches // workers
        mine = self.order(epoch)[lo:hi][first * self.batch_size:last * self.batch_size]
        if not mine.size:
            return []
        rows = np.asarray(self.entries.shard_rows)
        starts = self.entries.offsets[:-1] if self.entries.offsets is not None else [0]
        which = (np.searchsorted(self.entries.offsets, mine, side="right") - 1
                 if self.entries.offsets is not None else np.zeros(mine.size, dtype=np.int64))
        shard = (mine - np.asarray(starts)[which]) // rows[which] + which * (1 << 40)
        new = np.r_[0, np.flatnonzero(shard[1:] != shard[:-1]) + 1]  # where each shard starts
        cuts = new[self.buffer_shards::self.buffer_shards]
        return np.split(mine, cuts)

    def __iter__(self) -> Iterator[Sample]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        epoch = self.epoch
        rng = np.random.default_rng([self.seed, epoch, self.rank, worker])
        pending: list[Sample] = []
        held = 0
        for buffer in self.plan(epoch, worker, workers):
            # read in the shuffled order: the reader still reads each shard's inner chunks
            # in stored order, and puts every row in its place
            pending.append(self.entries.read(rng.permutation(buffer) if self.shuffle
                                             else buffer))
            held += buffer.size
            while held >= self.batch_size:
                out, pending, held = _split_off(pending, self.batch_size)
                yield _tensors(out)
        if held and not self.drop_last:
            out, pending, held = _split_off(pending, held)
            yield _tensors(out)


def _select(batch: Sample, rows: slice) -> Sample:
    """The rows ``rows`` of a batch (views of its numpy values)."""
    out: Sample = {}
    for key, value in batch.items():
        if isinstance(value, dict):
            out[key] = {k: v[rows] for k, v in value.items()}
        else:
            out[key] = value[rows]
    return out


def _split_off(parts: list[Sample], count: int) -> tuple[Sample, list[Sample], int]:
    """The first ``count`` rows of the batches ``parts`` as one batch, and the rest."""
    taken: list[Sample] = []
    need = count
    while need:
        part = parts[0]
        size = len(part["image"])
        if size <= need:
            taken.append(parts.pop(0))
            need -= size
        else:
            taken.append(_select(part, slice(0, need)))
            parts[0] = _select(part, slice(need, None))
            need = 0
    rest = sum(len(p["image"]) for p in parts)
    return _join(taken), parts, rest


def _join(parts: list[Sample]) -> Sample:
    """Batches laid end to end."""
    if len(parts) == 1:
        return parts[0]
    out: Sample = {}
    for key, value in parts[0].items():
        if isinstance(value, dict):
            out[key] = {k: np.concatenate([p[key][k] for p in parts]) for k in value}
        elif isinstance(value, list):
            out[key] = [x for p in parts for x in p[key]]
        else:
            out[key] = np.concatenate([p[key] for p in parts])
    return out


def _check_count(name: str, value: Any, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise InputError(f"{name}={value!r}: give an int of at least {least}")


def _rank_and_size(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """This process's rank and the number of ranks: the arguments, else torch.distributed's
    (when initialised), else ``RANK``/``WORLD_SIZE``, else ``(0, 1)``."""
    if (rank is None) != (world_size is None):
        raise InputError(f"rank={rank!r}, world_size={world_size!r}: give both (or neither, "
                         "to take them from torch.distributed or RANK/WORLD_SIZE)")
    if rank is None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            rank, world_size = dist.get_rank(), dist.get_world_size()
        elif "WORLD_SIZE" in os.environ or "RANK" in os.environ:
            try:
                rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            except (KeyError, ValueError):
                raise InputError(
                    f"RANK={os.environ.get('RANK')!r} and WORLD_SIZE="
                    f"{os.environ.get('WORLD_SIZE')!r} in the environment are not both "
                    "integers; set both (torchrun does), or pass rank= and world_size="
                ) from None
        else:
            rank, world_size = 0, 1
    _check_count("world_size", world_size, 1)
    _check_count("rank", rank, 0)
    assert rank is not None and world_size is not None
    if rank >= world_size:
        raise InputError(f"rank={rank} is not below world_size={world_size}; ranks are 0 to "
                         f"{world_size - 1}")
    logger.debug("reading as rank %d of %d", rank, world_size)
    return int(rank), int(world_size)
