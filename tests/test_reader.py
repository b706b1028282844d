"""The direct read path of sharded ``responses``: values, checks, requests and bytes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import crc32c
import numpy as np
import pytest
import xarray as xr
import zarr

import nest_data
from nest_data._dask import take_images, weighted_sums
from nest_data._format import DATA_VAR, EntryData
from nest_data._open import _open_url
from nest_data._reader import ShardReader, shard_reader
from nest_data._shards import layout_of
from nest_data._staging import object_digests
from nest_data._storage import make_store, quiet_consolidated
from nest_data._write import write_entry
from nest_data.errors import ChecksumError, MissingObjectError

from .backends import KEYS
from .servers import HTTPServer

LATERAL_VOXELS = 7799  # things sub-01 "lateral": the largest fMRI entry's row


def _entry(values: np.ndarray, dims: tuple[str, ...], chunks: tuple[int, ...] | None = None,
           ) -> EntryData:
    coords = {"ncsnr": ((dims[1],), np.linspace(0, 1, values.shape[1], dtype="f4"), {})}
    return EntryData(dims=dims, shape=values.shape, read_rows=lambda a, b: values[a:b],
                     coords=coords if len(dims) == 2 else {},
                     attrs={"modality": "fmri" if len(dims) == 2 else "eeg"}, keys={},
                     chunks=chunks)


def _write(root: Path, values: np.ndarray, dims: tuple[str, ...], chunk_bytes: int,
           chunks: tuple[int, ...] | None = None) -> str:
    write_entry(_entry(values, dims, chunks), root, "x.zarr", chunk_bytes=chunk_bytes)
    return str(root / "x.zarr")


def _open(url: str, **kw: Any) -> Any:
    return _open_url(url, {}, kw.pop("chunks", None), None, cache=kw.pop("cache", None),
                     verify=kw.pop("verify", None), load_labels=True)[DATA_VAR]


LAYOUTS = {  # values, dims, shard bytes, inner-chunk bytes, chunks after the image axis
    # voxels: shards of 24 images in inner chunks of 4; a partial last shard
    "voxel": (np.arange(70 * 125, dtype="f4").reshape(70, 125) / 7, ("image", "voxel"),
              24 * 125 * 4, 2048, None),
    # surface: shards of 16 images x 64 vertices, so a row spans 3 shards (last partial)
    "vertex": (np.arange(50 * 150, dtype="f4").reshape(50, 150) / 3, ("image", "vertex"),
               16 * 64 * 4, 2048, (64,)),
    # EEG: 4-D rows; shards of 8 images in inner chunks of 4
    "eeg": (np.arange(21 * 2 * 3 * 5, dtype="f4").reshape(21, 2, 3, 5) - 50,
            ("image", "repetition", "channel", "time"), 8 * 30 * 4, 512, None),
}


LZ4 = (zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=4),
       zarr.codecs.Crc32cCodec())


@pytest.fixture(params=[(layout, codec) for layout in sorted(LAYOUTS)
                        for codec in ("raw", "lz4")], ids="-".join)
def stored(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
           ) -> tuple[str, np.ndarray]:
    """A store in each layout, with raw inner chunks (the default) or Blosc LZ4 ones."""
    layout, codec = request.param
    values, dims, chunk_bytes, inner_bytes, chunks = LAYOUTS[layout]
    monkeypatch.setattr("nest_data._format.INNER_CHUNK_BYTES", inner_bytes)
    if codec == "lz4":
        monkeypatch.setattr("nest_data._write.response_codecs", lambda dtype: LZ4)
    return _write(tmp_path, values, dims, chunk_bytes, chunks), values


def test_layout_has_several_inner_chunks_per_shard(stored: tuple[str, np.ndarray]) -> None:
    url, values = stored
    meta = json.loads((Path(url) / DATA_VAR / "zarr.json").read_text())
    layout = layout_of(meta)
    assert layout is not None and layout.n_inner > 1
    assert layout.shape == values.shape and layout.shard[0] % layout.inner_rows == 0
    assert layout.compressed == ("blosc" in json.dumps(meta))


def test_selections_equal_zarr_and_source(stored: tuple[str, np.ndarray]) -> None:
    url, values = stored
    da = _open(url)
    assert isinstance(da.variable._data, type(da.data))  # dask-backed
    reference = zarr.open_array(url, path=DATA_VAR, mode="r")
    n = values.shape[0]
    rng = np.random.default_rng(0)
    keys: list[Any] = [np.s_[...], np.s_[0], np.s_[n - 1], np.s_[3:5], np.s_[1:n - 1:3]]
    for _ in range(20):
        lo = int(rng.integers(0, n - 1))
        hi = int(rng.integers(lo + 1, n + 1))
        cols = tuple(slice(int(a), int(a) + int(b)) for a, b in
                     ((rng.integers(0, m), rng.integers(1, m + 1)) for m in values.shape[1:]))
        keys.append((slice(lo, hi), *cols))
    for key in keys:
        np.testing.assert_array_equal(da[key].values, values[key])
        np.testing.assert_array_equal(reference[key], values[key])
    picks = rng.permutation(n)[:7]
    np.testing.assert_array_equal(da.isel(image=picks).values, values[picks])
    np.testing.assert_array_equal(_open(url, chunks={"image": 5}).values, values)


def test_weighted_sums_equal_numpy(stored: tuple[str, np.ndarray]) -> None:
    url, values = stored
    da = _open(url, chunks={"image": 7})
    weights = np.random.default_rng(1).random(values.shape[1:])
    fused = weighted_sums(da.data, weights)
    assert fused is not None and fused.chunks == (da.data.chunks[0],)
    expected = values.reshape(len(values), -1).astype("f8") @ weights.reshape(-1)
    np.testing.assert_allclose(fused.compute(), expected, rtol=2e-6)
    assert weighted_sums(da.isel(image=slice(1, None)).data, weights) is None  # not stored
    assert weighted_sums(da.data + 1, weights) is None


def test_take_images_equals_numpy_in_any_order(stored: tuple[str, np.ndarray]) -> None:
    url, values = stored
    da = _open(url)
    n = values.shape[0]
    rng = np.random.default_rng(5)
    for positions in (rng.permutation(n)[:9], np.array([n - 1, 0, 3, 3, n - 1]),
                      np.arange(n), np.array([], dtype=np.int64)):
        taken = take_images(da.data, positions)
        assert taken is not None and taken.shape == (len(positions), *values.shape[1:])
        np.testing.assert_array_equal(taken.compute(), values[positions])
    assert take_images(da.isel(image=slice(1, None)).data, np.array([0])) is None


def test_rsm_reads_only_needed_chunks_and_equals_generic(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.setattr("nest_data._format.INNER_CHUNK_BYTES", 4 * 300 * 4)
    values = np.random.default_rng(6).standard_normal((200, 300)).astype("f4")
    url = _write(tmp_path, values, ("image", "voxel"), 40 * 300 * 4)  # 5 shards, 10 chunks each
    da = _open(url)
    positions = np.array([150, 3, 77, 5])  # 4 of the 50 inner chunks
    fused = nest_data.rsm(da, images=positions, min_ncsnr=0.2)
    np.testing.assert_allclose(fused.values, np.corrcoef(values[positions][:, da.ncsnr > 0.2]),
                               atol=1e-12)
    hashed: list[int] = []  # bytes of each CRC-32C computed, when computed again
    real = crc32c.crc32c
    monkeypatch.setattr(crc32c, "crc32c",
                        lambda data, *more: hashed.append(len(data)) or real(data, *more))
    _ = fused.values
    chunk, index = 4 * 300 * 4 + 4, 10 * 16  # an inner chunk with its CRC; a shard's index
    # their 3 shards' indexes, and the 4 chunks: images 3 and 5 are in chunks 0 and 1, back
    # to back, so those two are read and checked in one run
    assert sorted(hashed) == [index] * 3 + [chunk] * 2 + [2 * chunk]
    generic = nest_data.rsm(da.chunk({"image": 50}), images=positions, min_ncsnr=0.2)
    np.testing.assert_array_equal(fused.values, generic.values)
    assert fused.attrs == generic.attrs and list(fused.coords) == list(generic.coords)


def test_roi_mean_fused_equals_generic(tmp_path: Path) -> None:
    values = np.random.default_rng(2).standard_normal((300, LATERAL_VOXELS)).astype("f4") + 2
    da = _open(_write(tmp_path, values, ("image", "voxel"), 8 * 2**20))
    keep = da.ncsnr.values > 0.3
    fused = nest_data.roi_mean(da, min_ncsnr=0.3)
    generic = nest_data.roi_mean(da.chunk({"image": 100}), min_ncsnr=0.3)  # not fused
    assert fused.data.name.startswith("_weighted_block")
    assert not generic.data.name.startswith("_weighted_block")
    expected = values[:, keep].astype("f8").mean(axis=1)
    np.testing.assert_allclose(fused.values, expected, rtol=1e-6)
    np.testing.assert_allclose(generic.values, expected, rtol=1e-6)
    assert fused.attrs == generic.attrs and list(fused.coords) == list(generic.coords)


def _flip(path: Path, offset: int) -> bytes:
    data = bytearray(path.read_bytes())
    original = bytes(data)
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    return original


@pytest.mark.parametrize("verify", [False, True])
@pytest.mark.parametrize("codec", ["raw", "lz4"])
def test_flipped_byte_is_an_error_even_without_verify(tmp_path: Path, verify: bool, codec: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    if codec == "lz4":
        monkeypatch.setattr("nest_data._write.response_codecs", lambda dtype: LZ4)
    values = np.arange(40 * 125, dtype="f4").reshape(40, 125)
    url = _write(tmp_path, values, ("image", "voxel"), 20 * 125 * 4)
    shard = Path(url) / DATA_VAR / "c" / "1" / "0"
    _flip(shard, 40)  # inside the first inner chunk's compressed bytes
    message = (r"object responses/c/1/0 of .* \(images 20-39\): inner chunk 0 fails its "
               r"CRC-32C check" if not verify else
               r"object responses/c/1/0 of .* does not match its recorded checksum")
    with pytest.raises(ChecksumError, match=message):
        _ = _open(url, verify=verify).values
    np.testing.assert_array_equal(_open(url).isel(image=slice(0, 20)).values, values[:20])


def _scattered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
               ) -> tuple[np.ndarray, Any, list[int]]:
    """200 x 125 values stored in 5 shards of 10 inner chunks (4 images each); the entry
    opened, and a list that records the size of every local read from then on."""
    import nest_data._sources

    monkeypatch.setattr("nest_data._format.INNER_CHUNK_BYTES", 4 * 125 * 4)
    values = np.random.default_rng(seed).standard_normal((200, 125)).astype("f4")
    da = _open(_write(tmp_path, values, ("image", "voxel"), 40 * 125 * 4))
    read: list[int] = []
    real = nest_data._sources.pread_into
    monkeypatch.setattr(nest_data._sources, "pread_into",
                        lambda fd, data, *rest: read.append(len(data)) or real(fd, data, *rest))
    return values, da, read


def test_select_images_reads_only_the_chunks_holding_them(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """``select_images`` is ``da.isel(image=...)``, labels included, reading per shard only
    the index and the inner chunks that hold the images, where dask reads whole shards."""
    values, da, read = _scattered(tmp_path, monkeypatch, 8)
    picks = [150, 3, -1, 3]  # shards 3, 0 and 4: one inner chunk each
    chosen = nest_data.select_images(da, picks)
    np.testing.assert_array_equal(chosen.values, values[picks])
    chunk, index = 4 * 125 * 4 + 4, 10 * 16 + 4
    assert sorted(read) == [index] * 3 + [chunk] * 3
    read.clear()
    generic = da.isel(image=picks)
    xr.testing.assert_identical(chosen, generic.compute())
    assert sum(read) >= 3 * 10 * chunk  # dask: every shard holding an image, whole
    mask = np.zeros(200, dtype=bool)
    mask[[0, 77, 199]] = True
    for images in (mask, slice(190, 10, -7), np.array([], dtype=int)):
        xr.testing.assert_identical(nest_data.select_images(da, images).compute(),
                                    da.isel(image=images).compute())
    with pytest.raises(nest_data.InputError, match="positions out of range: valid are 0 to 199"):
        nest_data.select_images(da, [200])
    with pytest.raises(nest_data.InputError, match="needs an entry with an 'image' dimension"):
        nest_data.select_images(da.isel(image=0), [1])


def test_local_take_is_split_into_tasks_over_whole_shards(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """A local take of many chunks runs as several tasks (each over whole shards, which the
    scheduler runs side by side); positions given out of order come back in their order."""
    monkeypatch.setattr("nest_data._dask._TAKE_TASK_BYTES", 2 * 4 * 125 * 4)  # 2 chunks
    values, da, read = _scattered(tmp_path, monkeypatch, 10)
    # shard 0: chunks 0, 1 (a task); shard 1: chunk 10 (under 2 chunks, so on with shard 2:
    # chunk 20, a task); shard 4: chunk 49 (a task of its own)
    picks = np.array([0, 1, 5, 41, 80, 199, 199])
    taken = take_images(da.data, picks)
    assert taken.chunks[0] == (3, 2, 2)
    np.testing.assert_array_equal(taken.compute(), values[picks])
    chunk, index = 4 * 125 * 4 + 4, 10 * 16 + 4
    assert sorted(read) == [index] * 4 + [chunk] * 3 + [2 * chunk]  # chunks 0-1: one read
    shuffled = np.array([199, 5, 80, 0, 41, 199, 1, -200])
    chosen = nest_data.select_images(da, shuffled)
    assert chosen.data.chunks[0] == (8,)  # read in tasks, then put back in the given order
    xr.testing.assert_identical(chosen.compute(), da.isel(image=shuffled).compute())
    for empty in (np.array([], dtype=int), []):
        assert nest_data.select_images(da, empty).shape == (0, 125)


def test_take_checks_every_chunk_it_gathers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    """A take reads a shard's scattered chunks into one buffer and checks them with one CRC:
    damage in any of them is still found and named."""
    monkeypatch.setattr("nest_data._format.INNER_CHUNK_BYTES", 4 * 125 * 4)
    values = np.arange(40 * 125, dtype="f4").reshape(40, 125)
    url = _write(tmp_path, values, ("image", "voxel"), 20 * 125 * 4)  # 5 chunks of 4 images
    picks = np.array([17, 1, 9, 2])  # chunks 4, 0 and 2 of shard 0: three separate runs
    da = _open(url)
    np.testing.assert_array_equal(take_images(da.data, picks).compute(), values[picks])
    chunk = 4 * 125 * 4 + 4
    _flip(Path(url) / DATA_VAR / "c" / "0" / "0", 2 * chunk + 7)  # inside chunk 2
    with pytest.raises(ChecksumError, match=r"object responses/c/0/0 of .* \(images 8-11\): "
                                            r"inner chunk 2 fails its CRC-32C check"):
        take_images(da.data, picks).compute()
    np.testing.assert_array_equal(take_images(da.data, np.array([17, 1])).compute(),
                                  values[[17, 1]])


@pytest.mark.parametrize("codec", ["raw", "lz4"])
def test_never_written_chunks_read_as_the_fill_value_like_zarr(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, codec: str) -> None:
    """An inner chunk that a shard's index marks as never written (what zarr leaves for a
    chunk of fill values) reads as the fill value, by every read path, as zarr reads it."""
    monkeypatch.setattr("nest_data._format.INNER_CHUNK_BYTES", 4 * 125 * 4)
    if codec == "lz4":
        monkeypatch.setattr("nest_data._write.response_codecs", lambda dtype: LZ4)
    values = np.arange(40 * 125, dtype="f4").reshape(40, 125)
    url = _write(tmp_path, values, ("image", "voxel"), 20 * 125 * 4)
    shard = Path(url) / DATA_VAR / "c" / "1" / "0"
    data = bytearray(shard.read_bytes())
    index_bytes = 5 * 16 + 4
    index = np.frombuffer(data[-index_bytes:-4], dtype="<u8").reshape(5, 2).copy()
    index[1] = 2**64 - 1  # images 24-27: never written
    data[-index_bytes:] = index.tobytes() + crc32c.crc32c(index.tobytes()).to_bytes(4, "little")
    shard.write_bytes(bytes(data))
    expected = values.copy()
    expected[24:28] = np.nan
    np.testing.assert_array_equal(zarr.open_array(url, path=DATA_VAR, mode="r")[:], expected)
    da = _open(url)
    np.testing.assert_array_equal(da.values, expected)
    picks = np.array([25, 3, 31, 24])
    np.testing.assert_array_equal(take_images(da.data, picks).compute(), expected[picks])
    np.testing.assert_array_equal(da.isel(image=26).values, expected[26])


def test_damaged_index_and_truncated_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    monkeypatch.setattr("nest_data._format.INNER_CHUNK_BYTES", 2048)
    values = np.arange(40 * 125, dtype="f4").reshape(40, 125)
    url = _write(tmp_path, values, ("image", "voxel"), 20 * 125 * 4)
    shard = Path(url) / DATA_VAR / "c" / "0" / "0"
    original = _flip(shard, shard.stat().st_size - 10)  # inside the index
    with pytest.raises(ChecksumError, match=r"images 0-19\): its index of inner chunks fails"):
        _ = _open(url).isel(image=3).values
    shard.write_bytes(original[: len(original) // 2])  # truncated: the index is gone
    with pytest.raises(ChecksumError, match=r"object responses/c/0/0 .* fails its CRC-32C"):
        _ = _open(url).values
    shard.unlink()
    with pytest.raises(MissingObjectError, match=r"object responses/c/0/0 .*\(images 0-19\) "
                                                 "is missing"):
        _ = _open(url).isel(image=3).values


def test_one_image_from_http_is_two_requests_of_one_inner_chunk(tmp_path: Path) -> None:
    values = np.random.default_rng(3).standard_normal((600, LATERAL_VOXELS)).astype("f4")
    url = _write(tmp_path, values, ("image", "voxel"), 8 * 2**20)
    layout = shard_reader(make_store(url), url, DATA_VAR).layout  # type: ignore[union-attr]
    assert (layout.shard[0], layout.inner_rows) == (268, 4)  # 8.4 MB shards, 125 KB chunks
    with HTTPServer() as server:
        server.upload(tmp_path)
        da = _open(f"{server.url}/x.zarr")
        server.reset()
        np.testing.assert_array_equal(da.isel(image=300).values, values[300])
        gets = [r for r in server.requests if "/responses/c/" in r.path]
        assert len(gets) == 2 and all(r.status == 206 for r in gets)
        # the index (67 x 16 bytes and its CRC) and the inner chunk of 4 images holding it
        assert sum(r.bytes_sent for r in gets) == 67 * 16 + 4 + 4 * LATERAL_VOXELS * 4 + 4
        server.reset()
        np.testing.assert_array_equal(da.values, values)  # a full scan: one GET per shard
        gets = [r for r in server.requests if "/responses/c/" in r.path]
        assert sorted(r.path.rsplit("/", 2)[-2] for r in gets) == ["0", "1", "2"]
        assert all(r.range is None for r in gets)
        # a server that ignores Range: the right bytes still, cut from the whole object
        server.ignore_range = True
        server.reset()
        np.testing.assert_array_equal(da.isel(image=17).values, values[17])
        gets = [r for r in server.requests if "/responses/c/" in r.path and r.method == "GET"]
        assert [r.status for r in gets] == [200, 200]  # (and a HEAD each, for the size)


def test_select_images_over_http_is_two_requests_per_shard(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setattr("nest_data._dask._TAKE_TASK_BYTES", 1)  # would split a local take
    values = np.random.default_rng(9).standard_normal((600, LATERAL_VOXELS)).astype("f4")
    _write(tmp_path, values, ("image", "voxel"), 8 * 2**20)  # shards of 268, chunks of 4
    with HTTPServer() as server:
        server.upload(tmp_path)
        da = _open(f"{server.url}/x.zarr")
        server.reset()
        picks = [301, 9, 5, 590]  # shard 1 chunk 8; shard 0 chunks 1-2; shard 2 chunk 13
        chosen = nest_data.select_images(da, picks)
        assert chosen.data.npartitions == 1  # one task: every shard's requests at once
        np.testing.assert_array_equal(chosen.values, values[picks])
        gets = [r for r in server.requests if "/responses/c/" in r.path]
        assert len(gets) == 6 and all(r.status == 206 for r in gets)
        index, chunk = 67 * 16 + 4, 4 * LATERAL_VOXELS * 4 + 4
        assert sum(r.bytes_sent for r in gets) == 3 * index + 4 * chunk


def test_verify_and_cache_read_whole_objects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    monkeypatch.setenv("NEST_DATA_CACHE_DIR", str(tmp_path / "cache"))
    values = np.random.default_rng(4).standard_normal((300, 2000)).astype("f4")
    url = _write(tmp_path / "root", values, ("image", "voxel"), 8 * 2**20)
    with HTTPServer() as server:
        server.upload(tmp_path / "root")
        for kw in ({"verify": True}, {"cache": True}):
            server.reset()
            da = _open(f"{server.url}/x.zarr", **kw)
            np.testing.assert_array_equal(da.isel(image=5).values, values[5])
            gets = [r for r in server.requests if "/responses/c/" in r.path]
            assert [r.range for r in gets] == [None]  # the whole object, checked (and kept)
    np.testing.assert_array_equal(_open(url, verify=True).isel(image=5).values, values[5])


@pytest.mark.parametrize("verify", [True, False])
def test_store_ranges_of_checked_objects_come_from_the_whole_object(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, verify: bool) -> None:
    """NestStore itself: with verify or a cache, a byte range of a listed object is cut from
    the whole object, checked first (what zarr's own sharded reads would ask for)."""
    from zarr.abc.store import RangeByteRequest
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    from nest_data._cache import ChunkCache
    from nest_data._format import read_store_attrs

    values = np.arange(40 * 125, dtype="f4").reshape(40, 125)
    url = _write(tmp_path, values, ("image", "voxel"), 20 * 125 * 4)
    cache = None if verify else ChunkCache(tmp_path / "cache")
    store = make_store(url, cache=cache, verify=verify).with_manifest(
        read_store_attrs(make_store(url))["objects"], 20)
    key = "responses/c/1/0"
    whole = (Path(url) / key).read_bytes()
    got = sync(store.get(key, default_buffer_prototype(), RangeByteRequest(8, 40)))
    assert got is not None and got.to_bytes() == whole[8:40]
    if cache is not None:
        assert cache.info().objects == 1  # the whole object was kept
        return
    _flip(Path(url) / key, 60)  # outside the requested range: still caught
    with pytest.raises(ChecksumError, match="object responses/c/1/0 of .* does not match"):
        sync(store.get(key, default_buffer_prototype(), RangeByteRequest(8, 40)))


def test_format_1_stores_still_open(tmp_path: Path) -> None:
    """Stores written before sharding (one Blosc chunk per block) are read through zarr."""
    values = np.arange(30 * 40, dtype="f4").reshape(30, 40)
    url = _write(tmp_path, values, ("image", "voxel"), 10 * 40 * 4)
    group = zarr.open_group(url, mode="r+")
    old = group[DATA_VAR]
    attrs = dict(old.attrs)
    del group[DATA_VAR]
    new = group.create_array(DATA_VAR, shape=old.shape, dtype="f4", chunks=(10, 40),
                             compressors=zarr.codecs.BloscCodec(cname="lz4"),
                             dimension_names=("image", "voxel"), attributes=attrs,
                             fill_value=np.nan)
    new[...] = values
    meta = dict(group.attrs["nest_data"])
    meta["objects"] = object_digests(Path(url))
    meta["format_version"] = 1
    group.attrs["nest_data"] = meta
    with quiet_consolidated():
        zarr.consolidate_metadata(url)
    assert shard_reader(make_store(url), url, DATA_VAR) is None
    da = _open(url)
    np.testing.assert_array_equal(da.values, values)
    assert weighted_sums(da.data, np.ones(40)) is None
    np.testing.assert_allclose(nest_data.roi_mean(da).values, values.mean(axis=1), rtol=1e-6)


def test_reader_takes_picked_images_with_the_other_axes_cut(stored: tuple[str, np.ndarray]
                                                            ) -> None:
    """An integer array along ``image`` (what a fused dask selection passes) reads only the
    inner chunks holding those images, with any cut of the other axes."""
    url, values = stored
    reader = shard_reader(make_store(url), url, DATA_VAR)
    assert isinstance(reader, ShardReader)
    n = values.shape[0]
    picks = np.array([n - 1, 2, 0, 2, n // 2])
    tail = tuple(slice(1, None, 2) for _ in values.shape[1:])
    np.testing.assert_array_equal(reader[(picks, *tail)], values[(picks, *tail)])
    np.testing.assert_array_equal(reader[picks], values[picks])
    np.testing.assert_array_equal(reader[(picks, *(0 for _ in values.shape[1:]))],
                                  values[(picks, *(0 for _ in values.shape[1:]))])
    mask = np.zeros(n, dtype=bool)
    mask[[1, n - 2]] = True
    np.testing.assert_array_equal(reader[mask], values[mask])


def test_reader_pickles_for_dask_workers(stored: tuple[str, np.ndarray]) -> None:
    import pickle

    url, values = stored
    reader = shard_reader(make_store(url), url, DATA_VAR)
    assert isinstance(reader, ShardReader)
    _ = reader[0:2]  # fills its per-thread buffers, which must not travel
    copy = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(copy[1:3], values[1:3])


def test_text_labels_are_read_at_open_and_decoded_on_first_use(chunked: Path) -> None:
    import copy

    store = chunked / nest_data.catalog().resolve(**KEYS).path
    expected = {name: zarr.open_group(store, mode="r")[name][...] for name in ("concept", "path")}
    assert expected["concept"].dtype.kind == "U"  # zarr-python reads them as <U too
    chunk = store / "concept" / "c" / "0"
    original = chunk.read_bytes()
    da = nest_data.open(location=str(chunked), **KEYS)
    assert type(da.concept.variable._data).__name__ == "LazilyIndexedArray"  # not decoded yet
    chunk.unlink()  # read at open: decoding later needs no file
    try:
        np.testing.assert_array_equal(da.concept.values, expected["concept"])
    finally:
        chunk.write_bytes(original)
    np.testing.assert_array_equal(da.path.values, expected["path"])
    assert da.concept.dtype == expected["concept"].dtype
    twin = copy.deepcopy(da)
    assert list(twin.concept.values) == list(expected["concept"])
    assert list(da.isel(image=[3, 1]).concept.values) == list(expected["concept"][[3, 1]])


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_shards_are_the_bytes_zarr_writes(tmp_path: Path, layout: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    values, dims, chunk_bytes, inner_bytes, chunks = LAYOUTS[layout]
    values = values.copy()
    values[3:9] = np.nan  # NaN rows, and in the voxel layout a shard's whole inner chunk
    monkeypatch.setattr("nest_data._format.INNER_CHUNK_BYTES", inner_bytes)
    ours = Path(_write(tmp_path / "ours", values, dims, chunk_bytes, chunks))
    meta = json.loads((ours / DATA_VAR / "zarr.json").read_text())
    theirs = zarr.create_array(tmp_path / "zarr", shape=values.shape, dtype="f4",
                               shards=meta["chunk_grid"]["configuration"]["chunk_shape"],
                               chunks=meta["codecs"][0]["configuration"]["chunk_shape"],
                               compressors=zarr.codecs.Crc32cCodec(), fill_value=np.nan,
                               config={"write_empty_chunks": True})
    theirs[:] = values
    objects = sorted(p.relative_to(ours / DATA_VAR) for p in (ours / DATA_VAR).rglob("c/**/*")
                     if p.is_file())
    assert objects == sorted(p.relative_to(tmp_path / "zarr")
                             for p in (tmp_path / "zarr").rglob("c/**/*") if p.is_file())
    assert len(objects) > 2
    for name in objects:
        assert (ours / DATA_VAR / name).read_bytes() == (tmp_path / "zarr" / name).read_bytes()
    np.testing.assert_array_equal(zarr.open_array(ours / DATA_VAR)[:], values)


def test_one_crc_over_a_run_finds_the_damaged_chunk() -> None:
    from nest_data._shards import crc_failures

    rng = np.random.default_rng(9)
    pieces = [rng.bytes(60) for _ in range(5)]
    run = bytearray(b"".join(p + crc32c.crc32c(p).to_bytes(4, "little") for p in pieces))
    starts, lengths = [64 * k for k in range(5)], [64] * 5
    assert crc_failures(memoryview(run), starts, lengths) == []
    run[2 * 64 + 7] ^= 0x10  # a value byte of piece 2
    run[4 * 64 + 62] ^= 0x01  # the stored CRC of piece 4
    assert crc_failures(memoryview(run), starts, lengths) == [2, 4]
