"""nest-data stores in other readers: xarray (the ``nest`` engine and ``open_zarr``),
intake-esm, zarr-python, tensorstore and zarrs, and every option of the ``nest`` engine.

Values are compared bit for bit with :func:`nest_data.open_store` in every reader.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr

import nest_data
from nest_data._format import EntryData
from nest_data._metadata import check_metadata
from nest_data._verify import verify_store
from nest_data._write import _portable, write_entry
from nest_data.errors import (
    ChecksumError,
    InputError,
    MissingObjectError,
    NestDataError,
    StoreFormatError,
)

from .servers import HTTPServer, S3Server

N_IMAGES, N_VOXELS = 200, 2000  # 8 KB rows: shards of 64 images, inner chunks of 16
SHARD, INNER = 64, 16
CONCEPTS = np.array([f"conc\u00e9pt-{i}" + "x" * (i % 7) for i in range(N_IMAGES)])  # <U17


def _values() -> np.ndarray:
    return (np.arange(N_IMAGES * N_VOXELS, dtype="f4").reshape(N_IMAGES, N_VOXELS) / 7) - 3


def _entry(values: np.ndarray) -> EntryData:
    return EntryData(
        dims=("image", "voxel"), shape=values.shape, read_rows=lambda a, b: values[a:b],
        coords={"image": (("image",), np.arange(N_IMAGES), {}),
                "concept": (("image",), CONCEPTS, {}),
                "ncsnr": (("voxel",), np.linspace(0, 1, N_VOXELS, dtype="f4"), {})},
        attrs={"units": "a.u."}, keys={}, aux={"train_img_num": np.arange(5)})


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A store of 4 shards (64, 64, 64, 8 images), each of 4 inner chunks, with text."""
    root = tmp_path_factory.mktemp("sharded")
    write_entry(_entry(_values()), root, "x.zarr", chunk_bytes=SHARD * N_VOXELS * 4)
    return str(root / "x.zarr")


ROIS = {"A": np.array([5, 7, 250, 2]), "B": np.arange(100, 180)}


def _surface_entry(values: np.ndarray) -> EntryData:
    n = values.shape[1]
    return EntryData(
        dims=("image", "vertex"), shape=values.shape, read_rows=lambda a, b: values[a:b],
        coords={"vertex": (("vertex",), np.arange(n), {}),
                "hemisphere": (("vertex",), np.array(["lh"] * (n // 2) + ["rh"] * (n - n // 2)),
                               {})},
        attrs={}, keys={}, aux={f"roi-{name}": v for name, v in ROIS.items()}, chunks=(128,))


@pytest.fixture(scope="module")
def surface(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A catalog root holding one small fsaverage-model store (things, sub-01), with the
    vertex positions of two ROIs, A and B, in its encoder group."""
    root = tmp_path_factory.mktemp("surface")
    entry = nest_data.catalog().resolve(train_dataset="nsd_fsaverage", imageset="things",
                                        subject=1)
    values = np.arange(12 * 300, dtype="f4").reshape(12, 300) * 0.5
    write_entry(_surface_entry(values), root, entry.path, chunk_bytes=4 * 128 * 4)
    return root, str(root / entry.path)


def _ours(url: str, **kw: Any) -> xr.DataArray:
    return nest_data.open_store(url, **kw)


# ------------------------------------------------------------------------- text labels
def test_text_labels_are_fixed_width_text_in_every_reader(sharded: str) -> None:
    meta = json.loads((Path(sharded) / "concept" / "zarr.json").read_text())
    assert meta["data_type"] == {"name": "fixed_length_utf32",
                                 "configuration": {"length_bytes": CONCEPTS.dtype.itemsize}}
    ours = _ours(sharded)
    assert ours.concept.dtype == CONCEPTS.dtype
    np.testing.assert_array_equal(ours.concept.values, CONCEPTS)
    np.testing.assert_array_equal(zarr.open_group(sharded, mode="r")["concept"][...], CONCEPTS)
    opened = {"nest": xr.open_dataset(sharded, engine="nest", chunks="auto"),
              "zarr": xr.open_zarr(sharded, chunks="auto")}
    for reader, ds in opened.items():
        assert ds.concept.dtype == CONCEPTS.dtype, reader
        np.testing.assert_array_equal(ds.concept.values, CONCEPTS)
        np.testing.assert_array_equal(ds.responses.values, ours.values)
        np.testing.assert_array_equal(ds.ncsnr.values, ours.ncsnr.values)


def test_intake_esm_opens_an_export_with_its_own_defaults(collection: Path,
                                                         tmp_path: Path) -> None:
    """intake-esm's plain ``to_dataset_dict()`` asks xarray's zarr engine for
    ``chunks="auto"``, which dask cannot size for variable-length text."""
    intake_esm = pytest.importorskip("intake_esm")
    cat = nest_data.catalog().search(imageset="things", subject=2, roi="FFA-1", model="fwrf")
    esm = intake_esm.esm_datastore(str(cat.to_intake_esm(tmp_path, location=str(collection),
                                                         name="mini")))
    (ds,) = esm.to_dataset_dict(progressbar=False).values()
    ours = nest_data.open(imageset="things", subject=2, roi="FFA-1", location=str(collection))
    np.testing.assert_array_equal(ds["responses"].values, ours.values)
    for label in ("concept", "path", "ncsnr"):
        np.testing.assert_array_equal(ds[label].values, ours[label].values)
    assert ds["concept"].dtype.kind == "U"


def _old_portable(values: np.ndarray) -> np.ndarray:
    """Text as the variable-length ``string`` stores before format 4 held."""
    values = np.asarray(values)
    return values.astype(np.dtypes.StringDType()) if values.dtype.kind in "US" else values


def test_stores_of_format_3_stay_readable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    with monkeypatch.context() as patch:
        patch.setattr("nest_data._write.FORMAT_VERSION", 3)
        patch.setattr("nest_data._write._portable", _old_portable)
        write_entry(_entry(_values()), tmp_path, "old.zarr", chunk_bytes=SHARD * N_VOXELS * 4)
    url = str(tmp_path / "old.zarr")
    root = json.loads((Path(url) / "zarr.json").read_text())
    assert root["attributes"]["nest_data"]["format_version"] == 3
    assert json.loads((Path(url) / "concept" / "zarr.json").read_text())["data_type"] == "string"
    ours = _ours(url)
    assert ours.concept.dtype == CONCEPTS.dtype  # decoded into fixed-width text
    np.testing.assert_array_equal(ours.concept.values, CONCEPTS)
    np.testing.assert_array_equal(ours.values, _values())
    auto = xr.open_dataset(url, engine="nest", chunks="auto")
    np.testing.assert_array_equal(auto.concept.values, CONCEPTS)
    lazy = _ours(url, load_labels=False)  # not decoded yet: variable-length text, as stored
    assert lazy.concept.dtype == np.dtypes.StringDType()
    np.testing.assert_array_equal(lazy.concept.values, CONCEPTS)
    # zarr's own engine reads the old encoding as StringDType: dask cannot size it
    assert xr.open_zarr(url).concept.dtype == np.dtypes.StringDType()
    assert verify_store(url) == []


def test_verify_reads_text_of_fixed_width(sharded: str) -> None:
    assert verify_store(sharded) == []


def test_text_of_fixed_width_is_checked_when_opened() -> None:
    node = {"node_type": "array", "shape": [3], "dimension_names": ["image"],
            "data_type": {"name": "fixed_length_utf32", "configuration": {"length_bytes": 6}},
            "fill_value": "",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [3]}},
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                       {"name": "zstd"}]}
    manifest = {"format_version": 2, "objects": {}, "checksums": {}}
    with pytest.raises(StoreFormatError, match=re.escape(
            "s.zarr: concept: its data type is {'name': 'fixed_length_utf32', "
            "'configuration': {'length_bytes': 6}}; nest-data stores hold bool, "
            "fixed_length_utf32, float16")) as caught:
        check_metadata(manifest, {"concept": node}, "s.zarr")
    assert "(fixed_length_utf32 with a length_bytes that is a positive multiple of 4)" in str(
        caught.value)


@pytest.mark.parametrize("bad", ["a\x00", None, 5])
def test_text_the_writer_cannot_hold_is_refused(bad: object) -> None:
    with pytest.raises(InputError, match=re.escape(f"a text label holds {bad!r}: labels of "
                                                   "text must be strings, none ending in a "
                                                   "NUL character")):
        _portable(np.array(["ok", bad], dtype=object))


# ------------------------------------------------------------------------------- chunks
def test_xarray_chunks_by_the_stored_shards(sharded: str) -> None:
    ours = _ours(sharded)
    assert ours.chunks == ((SHARD, SHARD, SHARD, 8), (N_VOXELS,))
    engine = xr.open_dataset(sharded, engine="nest", chunks={})
    assert engine.responses.chunks == ours.chunks
    assert engine.responses.encoding["preferred_chunks"] == {"image": ours.chunks[0],
                                                             "voxel": ours.chunks[1]}
    with pytest.warns(UserWarning, match="separate the stored chunks"):
        xr.open_dataset(sharded, engine="nest", chunks={"image": 40})
    many = xr.open_mfdataset([sharded, sharded], engine="nest", combine="nested",
                             concat_dim="image", join="override", compat="override",
                             coords="minimal")
    assert many.responses.chunks[0] == ours.chunks[0] * 2
    np.testing.assert_array_equal(many.responses.values, np.concatenate([_values()] * 2))
    # xarray's zarr engine chunks by the inner chunk and records the shard in its encoding
    plain = xr.open_zarr(sharded, chunks={})
    assert plain.responses.chunks[0] == (INNER,) * (N_IMAGES // INNER) + (N_IMAGES % INNER,)
    assert plain.responses.encoding["shards"] == (SHARD, N_VOXELS)
    with pytest.warns(UserWarning, match="separate the stored chunks"):  # the labels' one
        by_shard = xr.open_zarr(sharded, chunks=dict(zip(plain.responses.dims,
                                                         plain.responses.encoding["shards"],
                                                         strict=True)))
    assert by_shard.responses.chunks == ours.chunks
    np.testing.assert_array_equal(by_shard.responses.values, ours.values)


def test_remote_stores_prefer_their_tasks_of_several_shards(sharded: str) -> None:
    with HTTPServer() as server:
        server.upload(Path(sharded).parent)
        url = f"{server.url}/x.zarr"
        ours = _ours(url)
        engine = xr.open_dataset(url, engine="nest", chunks={})
        assert engine.responses.chunks == ours.chunks == ((N_IMAGES,), (N_VOXELS,))
        np.testing.assert_array_equal(engine.responses.values, _values())


# ---------------------------------------------------------------------- engine options
def test_option_storage_options(sharded: str) -> None:
    with S3Server() as server:
        server.upload(Path(sharded).parent)
        url = f"{server.url}/x.zarr"
        ds = xr.open_dataset(url, engine="nest", storage_options=server.storage_options)
        np.testing.assert_array_equal(ds.responses.values, _values())
        with pytest.raises(NestDataError):  # without them: no endpoint, no credentials
            xr.open_dataset(url, engine="nest", storage_options={"anon": True,
                                                                 "endpoint_url": server.url})


@pytest.fixture
def cache() -> Iterator[nest_data.ChunkCache]:
    shared = nest_data.ChunkCache.shared()
    shared.clear()
    yield shared
    shared.clear()


def test_option_chunk_cache(sharded: str, cache: nest_data.ChunkCache,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    with HTTPServer() as server:
        server.upload(Path(sharded).parent)
        url = f"{server.url}/x.zarr"
        monkeypatch.setenv("NEST_DATA_CACHE", "1")
        _ = xr.open_dataset(url, engine="nest", chunk_cache=False).responses[:40].values
        assert cache.info().objects == 0  # the argument wins over the environment
        _ = xr.open_dataset(url, engine="nest", cache=True).responses[:40].values
        assert cache.info().objects > 0  # cache= is xarray's: NEST_DATA_CACHE decides
        cache.clear()
        monkeypatch.delenv("NEST_DATA_CACHE")
        _ = xr.open_dataset(url, engine="nest", chunk_cache=True).responses[:40].values
        assert cache.info().objects > 0


def test_option_verify(sharded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = str(tmp_path / "x.zarr")
    shutil.copytree(sharded, url)
    shard = Path(url) / "responses" / "c" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[10] ^= 1  # inner chunk 0 (images 0-15) of shard 0
    shard.write_bytes(bytes(data))
    monkeypatch.setenv("NEST_DATA_VERIFY", "1")
    plain = xr.open_dataset(url, engine="nest", verify=False)  # the argument wins
    np.testing.assert_array_equal(plain.responses[40].values, _values()[40])  # its CRC holds
    with pytest.raises(ChecksumError, match="does not match its recorded checksum"):
        _ = xr.open_dataset(url, engine="nest", verify=True).responses[40].values


def test_option_load_labels(sharded: str, tmp_path: Path) -> None:
    url = str(tmp_path / "x.zarr")
    shutil.copytree(sharded, url)
    chunk = Path(url) / "concept" / "c" / "0"
    loaded = xr.open_dataset(url, engine="nest", load_labels=True)
    lazy = xr.open_dataset(url, engine="nest", load_labels=False)
    bare = xr.open_dataset(url, engine="nest", load_labels=False, create_default_indexes=False)
    assert "image" in loaded.xindexes and not bare.xindexes  # xarray's own indexes aside
    chunk.unlink()
    np.testing.assert_array_equal(loaded.concept.values, CONCEPTS)  # read when opened
    with pytest.raises(MissingObjectError, match="concept/c/0"):
        _ = lazy.concept.values  # read on first use
    np.testing.assert_array_equal(lazy.responses.values, _values())


def test_option_roi(surface: tuple[Path, str]) -> None:
    _, url = surface
    whole = xr.open_dataset(url, engine="nest")
    for name, positions in ROIS.items():
        roi = xr.open_dataset(url, engine="nest", roi=name, chunks={})
        assert roi.sizes["vertex"] == len(positions)
        expected = whole.isel(vertex=positions)  # BERG's order: as the positions list them
        np.testing.assert_array_equal(roi.responses.values, expected.responses.values)
        np.testing.assert_array_equal(roi.hemisphere.values, expected.hemisphere.values)
        assert roi.responses.attrs["roi"] == name
    with pytest.raises(InputError, match="has no vertex selection for ROI 'C'.*ROIs in it: A, B"):
        xr.open_dataset(url, engine="nest", roi="C")


def test_option_group(sharded: str) -> None:
    encoder = xr.open_dataset(sharded, engine="nest", group="encoder")
    np.testing.assert_array_equal(encoder["train_img_num"].values, np.arange(5))
    assert "responses" not in encoder


def test_option_drop_variables(sharded: str) -> None:
    ds = xr.open_dataset(sharded, engine="nest", drop_variables=["concept", "ncsnr"])
    assert "concept" not in ds.variables and "ncsnr" not in ds.variables
    np.testing.assert_array_equal(ds.responses.values, _values())


# ----------------------------------------------------------------------- intake-esm ROIs
def test_intake_esm_lists_a_surface_store_once_with_its_rois_selectable(
        surface: tuple[Path, str], tmp_path: Path) -> None:
    intake_esm = pytest.importorskip("intake_esm")
    root, url = surface
    cat = nest_data.catalog().search(train_dataset="nsd_fsaverage", imageset="things",
                                     subject=1)
    assert len(cat) > 1  # the whole surface and each ROI
    spec = cat.to_intake_esm(tmp_path, location=str(root), name="surface")
    esm = intake_esm.esm_datastore(str(spec))
    assert esm.df["roi"].tolist() == ["none"]  # one row: the whole surface
    assert len(esm.search(roi="A").df) == 0
    assert "select an ROI's vertices with ds.isel(vertex=" in esm.esmcat.description
    (ds,) = esm.to_dataset_dict(progressbar=False).values()
    assert ds.sizes["vertex"] == 300
    path = esm.df["path"].iloc[0]
    positions = xr.open_zarr(path, group="encoder")["roi-B"].values  # the recipe documented
    np.testing.assert_array_equal(ds.isel(vertex=positions).responses.values,
                                  _ours(url, roi="B").values)
    only_rois = nest_data.catalog().search(train_dataset="nsd_fsaverage", imageset="things",
                                           subject=1, roi=["FFA-1", "PPA"])
    esm = intake_esm.esm_datastore(str(only_rois.to_intake_esm(tmp_path, location=str(root),
                                                               name="rois")))
    assert esm.df["roi"].tolist() == ["none"]


# --------------------------------------------------------------------- other readers
def test_tensorstore_reads_responses_and_numbers_but_not_text(sharded: str) -> None:
    ts = pytest.importorskip("tensorstore")

    def array(name: str) -> Any:
        return ts.open({"driver": "zarr3",
                        "kvstore": {"driver": "file", "path": f"{sharded}/{name}"}}).result()

    np.testing.assert_array_equal(array("responses").read().result(), _values())
    np.testing.assert_array_equal(array("ncsnr").read().result(), _ours(sharded).ncsnr.values)
    with pytest.raises(ValueError, match="fixed_length_utf32 data type is not one of the "
                                         "supported data types"):
        array("concept")


@pytest.mark.filterwarnings("ignore::UserWarning:zarrs")  # its fallback, for the text
@pytest.mark.filterwarnings("ignore::zarr.errors.UnstableSpecificationWarning")
def test_zarrs_reads_everything(sharded: str) -> None:
    """zarrs-python 0.2.3 decodes responses and numbers itself and hands fixed-length text
    to zarr-python's own pipeline."""
    pytest.importorskip("zarrs")
    with zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"}):
        group = zarr.open_group(sharded, mode="r")
        np.testing.assert_array_equal(group["responses"][...], _values())
        np.testing.assert_array_equal(group["concept"][...], CONCEPTS)
        np.testing.assert_array_equal(group["responses"][40:41], _values()[40:41])
