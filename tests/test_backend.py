"""The ``nest`` xarray engine: xarray's own API reading through nest-data's checked path."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import nest_data
from nest_data.errors import ChecksumError, MissingObjectError

from .backends import KEYS
from .servers import HTTPServer


def _url(root: Path, **keys: object) -> str:
    cat = nest_data.catalog()
    return cat.location(str(root)).store(cat.resolve(**{**KEYS, **keys}))


def test_engine_is_registered_and_opens_the_same_values(chunked: Path) -> None:
    assert "nest" in xr.backends.list_engines()
    ds = xr.open_dataset(_url(chunked), engine="nest")
    ours = nest_data.open(location=str(chunked), **KEYS)
    xr.testing.assert_identical(ds.responses, ours)
    # the fused reductions recognise the array: the engine hands over nest-data's own reader
    assert nest_data.roi_mean(ds.responses).data.name.startswith("_weighted_block")
    assert "source" in ds.encoding
    dropped = xr.open_dataset(_url(chunked), engine="nest", drop_variables=["ncsnr"])
    assert "ncsnr" not in dropped.coords and "ncsnr" in ds.coords
    rechunked = xr.open_dataset(_url(chunked), engine="nest", chunks={"image": 10})
    assert rechunked.responses.chunks[0] == (10, 10, 10)
    np.testing.assert_array_equal(rechunked.responses.values, ours.values)


def test_open_mfdataset_concatenates_image_sets(collection: Path) -> None:
    urls = [_url(collection, imageset=s) for s in ("things", "nsd")]
    combined = xr.open_mfdataset(  # each set has its own labels: keep the values only
        urls, engine="nest", combine="nested", concat_dim="image", join="outer",
        preprocess=lambda ds: ds.responses.reset_coords(drop=True).to_dataset())
    assert combined.sizes["image"] == sum(xr.open_dataset(u, engine="nest").sizes["image"]
                                          for u in urls)
    parts = [nest_data.open(location=str(collection), **{**KEYS, "imageset": s})
             for s in ("things", "nsd")]
    np.testing.assert_array_equal(combined.responses.values,
                                  np.concatenate([p.values for p in parts]))


def test_engine_keeps_the_checks(chunked: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(chunked, root)
    url = _url(root)
    (Path(url) / "responses" / "c" / "1" / "0").unlink()
    with pytest.raises(MissingObjectError, match=r"object responses/c/1/0 of .* \(images 4-7\) "
                                                 "is missing"):
        _ = xr.open_dataset(url, engine="nest").responses.values
    shard = Path(url) / "responses" / "c" / "2" / "0"
    data = bytearray(shard.read_bytes())
    data[10] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="does not match its recorded checksum"):
        _ = xr.open_dataset(url, engine="nest", verify=True).responses.isel(image=9).values
    with pytest.raises(nest_data.InputError, match="storage_options=.* is not a dict"):
        xr.open_dataset(url, engine="nest", storage_options="anon")


def test_engine_reads_remote_stores(chunked: Path) -> None:
    with HTTPServer() as server:
        server.upload(chunked)
        ds = xr.open_dataset(_url(chunked).replace(str(chunked), server.url), engine="nest")
        np.testing.assert_array_equal(ds.responses.isel(image=5).values,
                                      nest_data.open(location=str(chunked), **KEYS)[5].values)
