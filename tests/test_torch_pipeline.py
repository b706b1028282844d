"""nest_data.torch: samples and batches of stored responses for a PyTorch DataLoader.

The ``chunked`` entry (things sub-01 V1, 30 images in shards of 4: 8 shards) is the one the
splitting and locality tests read; ``collection`` gives several subjects, image sets and EEG.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader  # noqa: E402

import nest_data  # noqa: E402
from nest_data._reader import ShardReader  # noqa: E402
from nest_data.errors import ChecksumError, InputError  # noqa: E402
from nest_data.torch import ResponseBatches, ResponseDataset  # noqa: E402

from .backends import KEYS, ROWS, Backend, open_entry, restore_object  # noqa: E402

N_IMAGES, N_SHARDS = 30, 8


@pytest.fixture(scope="module")
def entry(chunked: Path) -> xr.DataArray:
    keys: dict[str, Any] = dict(KEYS)
    return nest_data.open(location=str(chunked), **keys)


@pytest.fixture(scope="module")
def values(entry: xr.DataArray) -> np.ndarray:
    return np.asarray(entry.values)


def _indices(batches: Any) -> list[int]:
    return [int(i) for batch in batches for i in batch["index"]]


def _epoch(ds: ResponseBatches, epoch: int, **loader: Any) -> list[dict[str, Any]]:
    ds.set_epoch(epoch)
    return list(DataLoader(ds, batch_size=None, **loader))


# -- the batch contract ------------------------------------------------------------------


def test_map_style_samples_and_batches(entry: xr.DataArray, values: np.ndarray) -> None:
    ds = ResponseDataset(entry)
    assert len(ds) == N_IMAGES
    sample = ds[5]
    assert sorted(sample) == ["image", "index", "responses"]
    assert sample["responses"].dtype == torch.float32 and sample["image"] == "5"
    assert sample["index"] == 5
    np.testing.assert_array_equal(sample["responses"].numpy(), values[5])
    np.testing.assert_array_equal(ds[-1]["responses"].numpy(), values[-1])
    loader = DataLoader(ds, batch_size=7, shuffle=True,
                        generator=torch.Generator().manual_seed(3))
    batches = list(loader)
    assert [b["responses"].shape for b in batches] == [(7, 1350)] * 4 + [(2, 1350)]
    seen = _indices(batches)
    assert sorted(seen) == list(range(N_IMAGES)) and seen != list(range(N_IMAGES))
    for batch in batches:
        index = batch["index"].numpy()
        assert batch["image"] == [str(i) for i in index]
        np.testing.assert_array_equal(batch["responses"].numpy(), values[index])


def test_batches_values_and_sizes(entry: xr.DataArray, values: np.ndarray) -> None:
    ds = ResponseBatches(entry, batch_size=4, seed=7)
    batches = _epoch(ds, 0)
    assert len(batches) == len(ds) == 8
    assert [len(b["image"]) for b in batches] == [4] * 7 + [2]
    assert sorted(_indices(batches)) == list(range(N_IMAGES))
    for batch in batches:
        assert batch["responses"].dtype == torch.float32
        assert batch["index"].dtype == torch.int64
        assert batch["image"] == [str(int(i)) for i in batch["index"]]
        np.testing.assert_array_equal(batch["responses"].numpy(), values[batch["index"].numpy()])
    in_order = _epoch(ResponseBatches(entry, batch_size=4, shuffle=False), 0)
    assert _indices(in_order) == list(range(N_IMAGES))


# -- every image once, across workers and ranks ------------------------------------------


def test_every_image_once_across_two_workers(entry: xr.DataArray, values: np.ndarray) -> None:
    ds = ResponseBatches(entry, batch_size=3, seed=1)
    batches = _epoch(ds, 0, num_workers=2)
    assert sorted(_indices(batches)) == list(range(N_IMAGES))
    assert len(batches) == len(ds) == 10
    for batch in batches:
        np.testing.assert_array_equal(batch["responses"].numpy(), values[batch["index"].numpy()])


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("n_images", [30, 29])
def test_every_image_once_across_ranks(entry: xr.DataArray, values: np.ndarray,
                                       world_size: int, n_images: int) -> None:
    # 29 images: uneven shares, and not exactly the stored array (read through its graph)
    da = entry if n_images == N_IMAGES else entry.isel(image=slice(0, n_images))
    seen: list[int] = []
    shares = []
    for rank in range(world_size):
        ds = ResponseBatches(da, batch_size=4, seed=2, rank=rank, world_size=world_size)
        batches = _epoch(ds, 3)
        assert len(batches) == len(ds)
        shares.append(len(_indices(batches)))
        seen += _indices(batches)
        for batch in batches:
            np.testing.assert_array_equal(batch["responses"].numpy(),
                                          values[batch["index"].numpy()])
    assert sorted(seen) == list(range(n_images))  # no image dropped, none repeated
    assert max(shares) - min(shares) <= 1


def test_ranks_and_workers_together(entry: xr.DataArray) -> None:
    seen: list[int] = []
    for rank in range(3):
        ds = ResponseBatches(entry, batch_size=2, seed=4, rank=rank, world_size=3)
        seen += _indices(_epoch(ds, 1, num_workers=2))
    assert sorted(seen) == list(range(N_IMAGES))


@pytest.mark.parametrize("world_size", [2, 3])
def test_drop_last_gives_every_rank_the_same_full_batches(entry: xr.DataArray,
                                                          world_size: int) -> None:
    seen: list[int] = []
    counts = set()
    for rank in range(world_size):
        ds = ResponseBatches(entry, batch_size=4, seed=5, drop_last=True, rank=rank,
                             world_size=world_size)
        batches = _epoch(ds, 0)
        assert {len(b["image"]) for b in batches} == {4} and len(batches) == len(ds)
        counts.add(len(batches))
        seen += _indices(batches)
    assert len(counts) == 1
    assert len(seen) == len(set(seen)) == N_IMAGES // (4 * world_size) * 4 * world_size


def test_rank_from_environment(entry: xr.DataArray, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    ds = ResponseBatches(entry, batch_size=4)
    assert (ds.rank, ds.world_size) == (1, 3)
    explicit = ResponseBatches(entry, batch_size=4, rank=1, world_size=3)
    assert _indices(_epoch(ds, 2)) == _indices(_epoch(explicit, 2))
    monkeypatch.setenv("WORLD_SIZE", "three")
    with pytest.raises(InputError, match="WORLD_SIZE='three' in the environment are not both"):
        ResponseBatches(entry, batch_size=4)


# -- shuffling: seeded, per epoch, local ---------------------------------------------------


def test_seeded_and_different_per_epoch(entry: xr.DataArray) -> None:
    def order(seed: int, epoch: int, **loader: Any) -> list[int]:
        return _indices(_epoch(ResponseBatches(entry, batch_size=3, seed=seed), epoch,
                               **loader))

    assert order(0, 0) == order(0, 0)
    assert order(0, 1) != order(0, 0)
    assert order(1, 0) != order(0, 0)
    assert sorted(order(0, 1)) == list(range(N_IMAGES))
    # set_epoch reaches persistent workers (the dataset lives on in them)
    ds = ResponseBatches(entry, batch_size=3, seed=0)
    loader = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)
    ds.set_epoch(0)
    first = _indices(loader)
    ds.set_epoch(1)
    second = _indices(loader)
    assert first == order(0, 0, num_workers=2) and second == order(0, 1, num_workers=2)
    assert first != second


def test_shuffle_buffer_reads_each_shard_once(entry: xr.DataArray,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    reads: Counter[str] = Counter()
    original = ShardReader._read_local

    def counting(self: ShardReader, folder: str, piece: Any, sink: Any) -> None:
        reads[piece.key] += 1
        original(self, folder, piece, sink)

    monkeypatch.setattr(ShardReader, "_read_local", counting)
    ds = ResponseBatches(entry, batch_size=3, seed=9, buffer_shards=2)
    for epoch in range(2):
        reads.clear()
        batches = _epoch(ds, epoch)
        assert len(reads) == N_SHARDS and set(reads.values()) == {1}  # not one per image
        # images are shuffled inside buffers of two shards, each read once
        order = _indices(batches)
        assert order != sorted(order)
        for buffer in ds.plan(epoch):
            mixed, order = order[:buffer.size], order[buffer.size:]
            assert sorted(mixed) == sorted(buffer.tolist())
            assert len({i // ROWS for i in mixed}) <= 2
    reads.clear()  # two ranks: a share may end inside a shard, which both then read
    for rank in range(2):
        _epoch(ResponseBatches(entry, batch_size=3, seed=9, rank=rank, world_size=2), 0)
    assert len(reads) == N_SHARDS and sum(reads.values()) <= N_SHARDS + 1
    reads.clear()  # shuffled map-style access reads a shard per image's batch
    list(DataLoader(ResponseDataset(entry), batch_size=3, shuffle=True,
                    generator=torch.Generator().manual_seed(0)))
    assert sum(reads.values()) > N_SHARDS


# -- several entries, EEG, pixels ----------------------------------------------------------


def test_align_subjects_by_image(collection: Path) -> None:
    tree = nest_data.open_many(imageset="things", subject=[1, 2], roi="V1",
                               location=str(collection))
    one = tree["sub-01/V1"].dataset["responses"]
    two = tree["sub-02/V1"].dataset["responses"]
    ds = ResponseDataset(tree)
    sample = ds[4]
    assert sorted(sample["responses"]) == ["sub-01/V1", "sub-02/V1"] and "entry" not in sample
    np.testing.assert_array_equal(sample["responses"]["sub-02/V1"].numpy(), two.values[4])
    # rows are matched by image label, whatever order an entry is in
    shuffled = two.isel(image=np.random.default_rng(0).permutation(two.sizes["image"]))
    stream = ResponseBatches({"a": one, "b": shuffled}, batch_size=8, seed=3)
    batches = _epoch(stream, 0)
    assert sorted(_indices(batches)) == list(range(one.sizes["image"]))
    for batch in batches:
        np.testing.assert_array_equal(batch["responses"]["a"].numpy(),
                                      one.values[batch["index"].numpy()])
        np.testing.assert_array_equal(batch["responses"]["b"].numpy(),
                                      two.values[batch["index"].numpy()])
    with pytest.raises(InputError, match=r"'b' has 10 images and 'a' has 30 \(20 of the "
                                         r"latter's missing"):
        ResponseDataset({"a": one, "b": two.isel(image=slice(0, 10))})


def test_concat_image_sets(collection: Path) -> None:
    things = nest_data.open(imageset="things", subject=1, roi="V1", location=str(collection))
    nsd = nest_data.open(imageset="nsd", subject=1, roi="V1", location=str(collection))
    ds = ResponseBatches([things, nsd], batch_size=7, combine="concat", seed=1)
    batches = _epoch(ds, 0)
    pairs = [(e, int(i)) for b in batches for e, i in zip(b["entry"], b["index"], strict=True)]
    names = ["fmri/nsd/fwrf/things/sub-01/V1", "fmri/nsd/fwrf/nsd/sub-01/V1"]
    assert sorted(pairs) == sorted((n, i) for n, da in zip(names, [things, nsd], strict=True)
                                   for i in range(da.sizes["image"]))
    for batch in batches:
        for row, name, i in zip(batch["responses"], batch["entry"], batch["index"],
                                strict=True):
            source = things if name == names[0] else nsd
            np.testing.assert_array_equal(row.numpy(), source.values[int(i)])
    sample = ResponseDataset([things, nsd], combine="concat")[things.sizes["image"] + 2]
    assert (sample["entry"], sample["index"]) == (names[1], 2)
    lateral = nest_data.open(imageset="nsd", subject=1, roi="lateral", location=str(collection))
    with pytest.raises(InputError, match="combine='concat' needs rows of one shape"):
        ResponseDataset([things, lateral], combine="concat")


def test_eeg_rows(collection: Path) -> None:
    eeg = nest_data.open(modality="eeg", imageset="nsd", subject=1, location=str(collection))
    sample = ResponseDataset(eeg)[2]
    assert tuple(sample["responses"].shape) == eeg.shape[1:]
    np.testing.assert_array_equal(sample["responses"].numpy(), eeg.values[2])
    (batch, *_) = _epoch(ResponseBatches(eeg, batch_size=5), 0)
    assert tuple(batch["responses"].shape) == (5, *eeg.shape[1:])


def test_pixels_travel_with_their_responses(entry: xr.DataArray, values: np.ndarray,
                                            tmp_path: Path) -> None:
    import h5py

    pixels = nest_data.synthetic.test_images(N_IMAGES, 8)
    with h5py.File(tmp_path / "images.h5", "w") as f:
        f["images"] = pixels
    with h5py.File(tmp_path / "images.h5") as f:
        for source in (pixels, f["images"]):
            batches = _epoch(ResponseBatches(entry, batch_size=6, pixels=source), 0)
            for batch in batches:
                assert batch["pixels"].dtype == torch.uint8
                np.testing.assert_array_equal(batch["pixels"].numpy(),
                                              pixels[batch["index"].numpy()])
                np.testing.assert_array_equal(batch["responses"].numpy(),
                                              values[batch["index"].numpy()])
    sample = ResponseDataset(entry, pixels=pixels)[11]
    np.testing.assert_array_equal(sample["pixels"].numpy(), pixels[11])


# -- remote, cache, damage -----------------------------------------------------------------


@pytest.mark.parametrize("backend", ["http"], indirect=True)
def test_remote_with_workers_and_cache(backend: Backend, values: np.ndarray) -> None:
    ds = ResponseBatches(open_entry(backend, cache=True), batch_size=4, seed=6)
    backend.reset()
    batches = _epoch(ds, 0, num_workers=2)
    assert sorted(_indices(batches)) == list(range(N_IMAGES))
    for batch in batches:
        np.testing.assert_array_equal(batch["responses"].numpy(), values[batch["index"].numpy()])
    assert any("/responses/c/" in r.path for r in backend.requests())
    backend.reset()
    again = _epoch(ds, 1, num_workers=2)  # every shard is now in the cache
    assert sorted(_indices(again)) == list(range(N_IMAGES))
    assert not [r for r in backend.requests() if "/responses/c/" in r.path]


@pytest.mark.parametrize(("backend", "num_workers"), [("local", 0), ("http", 0), ("http", 1)],
                         indirect=["backend"])
def test_damaged_chunk_is_an_error_in_the_loader(backend: Backend, chunked: Path,
                                                 num_workers: int) -> None:
    # (a DataLoader whose worker raised takes seconds to shut down: one worker, one loader)
    key = nest_data.catalog().resolve(**KEYS).path + "/responses/c/2/0"
    original = (chunked / key).read_bytes()
    damaged = bytearray(original)
    damaged[100] ^= 0x10  # still a plausible float32
    restore_object(backend, key, bytes(damaged))
    try:
        ds = ResponseBatches(open_entry(backend), batch_size=4, seed=0)
        with pytest.raises(ChecksumError, match=r"responses/c/2/0 .* fails its CRC-32C"):
            _epoch(ds, 0, num_workers=num_workers)
        if not num_workers:
            with pytest.raises(ChecksumError, match=r"responses/c/2/0 .* fails its CRC-32C"):
                list(DataLoader(ResponseDataset(open_entry(backend)), batch_size=30))
    finally:
        restore_object(backend, key, original)


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"batch_size": 0}, r"batch_size=0: give an int of at least 1"),
    ({"batch_size": True}, r"batch_size=True: give an int of at least 1"),
    ({"batch_size": 2, "buffer_shards": 0}, r"buffer_shards=0: give an int of at least 1"),
    ({"batch_size": 2, "seed": -1}, r"seed=-1: give an int of at least 0"),
    ({"batch_size": 2, "rank": 1}, r"rank=1, world_size=None: give both"),
    ({"batch_size": 2, "rank": 3, "world_size": 3}, r"rank=3 is not below world_size=3; "
                                                    r"ranks are 0 to 2"),
    ({"batch_size": 2, "combine": "stack"}, r"combine='stack' is not one of \('align', "
                                            r"'concat'\)"),
    ({"batch_size": 2, "pixels": np.zeros((29, 8, 8, 3), np.uint8)},
     r"pixels for 'responses' hold 29 images but the entry has 30"),
    ({"batch_size": 2, "pixels": np.zeros((30, 8, 8, 3), np.float32)},
     r"pixels for 'responses' are float32, not uint8"),
])
def test_bad_arguments(entry: xr.DataArray, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        ResponseBatches(entry, **kwargs)


def test_bad_entries_and_indices(entry: xr.DataArray, collection: Path) -> None:
    with pytest.raises(InputError, match=r"responses: got ndarray; give a DataArray"):
        ResponseDataset(np.zeros((3, 4)))
    with pytest.raises(InputError, match=r"entry 'a' is dims \('voxel',\), not responses with "
                                         r"an 'image' dimension"):
        ResponseDataset({"a": entry.isel(image=0)})
    with pytest.raises(InputError, match="two of the entries are both"):
        ResponseDataset([entry, entry])
    with pytest.raises(InputError, match=r"index 30 is out of range for 30 images; give 0 "
                                         r"to 29"):
        ResponseDataset(entry)[30]
    nsd = nest_data.open(imageset="nsd", subject=1, roi="V1", location=str(collection))
    with pytest.raises(InputError, match=r"pixels must be a dict of entry name -> pixel "
                                         r"array, one per entry .*; got \['sub-09'\]"):
        ResponseDataset([entry, nsd], combine="concat",
                        pixels={"sub-09": np.zeros((30, 8, 8, 3), np.uint8)})
    with pytest.raises(InputError, match=r"epoch=-1: give an int of at least 0"):
        ResponseBatches(entry, batch_size=2).set_epoch(-1)
