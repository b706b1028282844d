"""nest_data.open / open_many: labelled, lazy, located through the catalog."""

from __future__ import annotations

import shutil
from pathlib import Path

import dask.array
import numpy as np
import pytest
import xarray as xr

import nest_data


def test_open_is_lazy(collection: Path, tmp_path: Path) -> None:
    # Copy one store and delete its response chunks: opening must still work, proving it
    # reads metadata only; computing then fails because the chunks are gone.
    cat = nest_data.catalog()
    entry = cat.resolve(imageset="things", subject=1, roi="V1")
    shutil.copytree(collection / entry.path, tmp_path / entry.path)
    shutil.rmtree(tmp_path / entry.path / "responses" / "c")
    da = nest_data.open(imageset="things", subject=1, roi="V1", location=str(tmp_path))
    assert isinstance(da.data, dask.array.Array)
    assert isinstance(da.ncsnr.data, np.ndarray)  # labels are loaded, values are not
    assert da.shape == (30, 1350) and da.sizes == {"image": 30, "voxel": 1350}
    # zarr would return the fill value (NaN) for the missing chunk; the manifest makes it an
    # error naming the chunk instead
    with pytest.raises(nest_data.MissingObjectError, match=r"object responses/c/0/0 of .* "
                                                           r"\(images 0-23\) is missing"):
        _ = da.isel(image=0).values


def test_selection_by_labels(collection: Path) -> None:
    da = nest_data.open(imageset="things", subject=1, roi="V1", location=str(collection))
    reliable = da.where(da.ncsnr > 0.5, drop=True)
    assert 0 < reliable.sizes["voxel"] < da.sizes["voxel"]
    concept = str(da.concept.values[0])
    by_concept = da.isel(image=np.flatnonzero(da.concept.values == concept))
    np.testing.assert_array_equal(by_concept.values, da.values[da.concept.values == concept])


def test_location_from_environment(collection: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEST_DATA_ROOT", str(collection))
    da = nest_data.open(imageset="nsd", subject=2, roi="lateral")
    assert da.sizes["voxel"] == nest_data.synthetic.roi_voxel_count(2, "lateral")


@pytest.mark.filterwarnings("ignore:The specified chunks separate the stored chunks")
def test_catalog_open_and_custom_chunks(collection: Path) -> None:
    cat = nest_data.catalog()
    cat.add_location("mini", str(collection))
    da = nest_data.open(imageset="nsd", subject=1, roi="lateral", location="mini",
                        chunks={"image": 7}, catalog=cat)
    assert da.chunks[0] == (7, 7, 7, 7, 2)


def test_open_many_datatree(collection: Path) -> None:
    tree = nest_data.open_many(imageset="things", subject=[1, 2], roi=["V1", "lateral"],
                               location=str(collection))
    assert isinstance(tree, xr.DataTree)
    assert sorted(tree.children) == ["sub-01", "sub-02"]
    assert sorted(tree["sub-02"].children) == ["V1", "lateral"]
    v1 = tree["sub-02/V1"].dataset["responses"]
    direct = nest_data.open(imageset="things", subject=2, roi="V1", location=str(collection))
    assert v1.sizes == direct.sizes and v1.sizes["voxel"] != tree["sub-01/V1"].dataset[
        "responses"].sizes["voxel"]
    np.testing.assert_array_equal(v1.values, direct.values)
    eeg = nest_data.open_many(modality="eeg", imageset="nsd", subject=[1],
                              location=str(collection))
    assert eeg["sub-01"].dataset["responses"].dims == ("image", "repetition", "channel", "time")


def test_analysis_roi_mean_and_top_images(collection: Path) -> None:
    da = nest_data.open(imageset="things", subject=1, roi="FFA-1", location=str(collection))
    keep = da.ncsnr.values > 0.5
    expected = da.values[:, keep].mean(axis=1)
    got = nest_data.roi_mean(da, min_ncsnr=0.5)
    assert isinstance(got.data, dask.array.Array)  # lazy
    np.testing.assert_allclose(got.values, expected, rtol=1e-5, atol=1e-6)
    top = nest_data.top_images(da, k=4, min_ncsnr=0.5)
    np.testing.assert_array_equal(top.image.values, np.argsort(-expected)[:4])
    bottom = nest_data.top_images(da, k=2, min_ncsnr=0.5, largest=False)
    np.testing.assert_array_equal(bottom.image.values, np.argsort(expected)[:2])
    assert "concept" in top.coords
    with_nan = da.copy(data=da.values.copy())
    with_nan.values[0, np.flatnonzero(keep)[0]] = np.nan
    with_nan.attrs["nan_count"] = 1
    assert np.isfinite(nest_data.roi_mean(with_nan, min_ncsnr=0.5).values[0])  # NaN skipped
    with pytest.raises(nest_data.NestDataError, match="no voxel has ncsnr > 99"):
        nest_data.roi_mean(da, min_ncsnr=99)
