"""The ``nest`` xarray engine: xarray's own API reading through nest-data's checked path."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

import nest_data
from nest_data.errors import ChecksumError, InputError, MissingObjectError, UnknownKeyError

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
    with pytest.warns(UserWarning, match="chunks separate the stored chunks"):  # shards of 4
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
        # chunk_cache= is nest-data's chunk cache (xarray keeps cache= for its own)
        cache = nest_data.ChunkCache.shared()
        cache.clear()
        cached = xr.open_dataset(_url(chunked).replace(str(chunked), server.url),
                                 engine="nest", chunk_cache=True)
        _ = cached.responses.isel(image=5).values
        assert cache.info().objects > 0


def test_engine_accepts_what_xarray_passes_every_backend(chunked: Path) -> None:
    """xarray's CF decoding keywords reach every engine; nest-data stores need no decoding,
    so they are accepted and change nothing."""
    url = _url(chunked)
    plain = xr.open_dataset(url, engine="nest")
    for kwargs in ({"decode_times": False}, {"decode_cf": False}, {"decode_cf": True},
                   {"mask_and_scale": True, "decode_timedelta": False, "use_cftime": False,
                    "concat_characters": True, "decode_coords": "all"},
                   {"group": "/"}, {"group": ""}, {"chunk_cache": False}, {"cache": True}):
        xr.testing.assert_identical(xr.open_dataset(url, engine="nest", **kwargs), plain)
    encoder = xr.open_dataset(url, engine="nest", group="encoder")
    assert encoder.data_vars and "responses" not in encoder
    xr.testing.assert_identical(xr.open_dataset(url, engine="nest", group="/encoder"), encoder)


@pytest.mark.parametrize(("args", "kwargs", "error", "message"), [
    ((None,), {}, InputError, "xr.open_dataset(None, engine='nest'): give the path or URL of a "
                              "nest-data store (a .zarr folder)"),
    ((5,), {}, InputError, "xr.open_dataset(5, engine='nest'): give the path or URL"),
    (("",), {}, InputError, "xr.open_dataset('', engine='nest'): give the path or URL"),
    ((), {"group": "nope"}, UnknownKeyError,
     "group='nope': a nest-data store has the groups None (the root: responses and labels) "
     "and 'encoder' (the encoder's metadata); pass one of them, or leave group out"),
    ((), {"group": 5}, UnknownKeyError, "group=5: a nest-data store has the groups"),
    ((), {"foo": 1}, InputError,
     "the nest engine does not know foo; it takes storage_options, chunk_cache, verify, "
     "load_labels, roi, group, and xarray's decoding keywords (ignored: nest-data stores need "
     "no CF decoding). Remove the others, or open the store with nest_data.open_store"),
    ((), {"backend_kwargs": {"load_labels": "yes", "roi": 5}}, InputError,
     "the nest engine cannot use load_labels='yes' (True or False); roi=5 (a surface store's "
     "ROI name, e.g. 'FFA-1', or None); give values of those types"),
    ((), {"backend_kwargs": {"verify": "no", "chunk_cache": 1.5}}, InputError,
     "the nest engine cannot use chunk_cache=1.5 (True, False or None); verify='no' (True, "
     "False or None)"),
])
def test_engine_refuses_bad_arguments_with_our_errors(
        chunked: Path, args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception],
        message: str) -> None:
    with pytest.raises(error, match="^" + re.escape(message)):
        xr.open_dataset(*(args or (_url(chunked),)), engine="nest", **kwargs)
    assert issubclass(UnknownKeyError, KeyError)


def test_engine_chunks_are_xarrays_to_check(chunked: Path) -> None:
    """xarray applies ``chunks=`` after the engine returns (the engine never sees it): a bad
    value gets xarray's own error; nest_data.open_store checks it with ours."""
    url = _url(chunked)
    with pytest.raises(ValueError) as caught:
        xr.open_dataset(url, engine="nest", chunks={"image": -3})
    assert not isinstance(caught.value, nest_data.NestDataError)
    with pytest.raises(InputError, match=re.escape("chunks={'image': -3}: the size for 'image' "
                                                   "is -3")):
        nest_data.open_store(url, chunks={"image": -3})


def test_engine_refuses_the_encoder_group_of_a_store_without_one(ned_src: Path,
                                                                  tmp_path: Path) -> None:
    import h5py

    from nest_data._write import write_entry
    from nest_data.converters._pickle import load_npy_dict
    from nest_data.converters.ned import discover_ned
    from nest_data.converters.ned_entry import entry_data

    (source,) = discover_ned(ned_src, **KEYS)
    with h5py.File(source.h5) as f:
        data = entry_data(source, f["synthetic_neural_responses"], load_npy_dict(source.npy),
                          units="a.u.")
        assert data.aux  # a converted store has the encoder group; this one will not
        write_entry(dataclasses.replace(data, aux={}), tmp_path, source.entry.path)
    url = _url(tmp_path)
    assert "responses" in xr.open_dataset(url, engine="nest")
    with pytest.raises(UnknownKeyError, match=re.escape(
            f"the store {url} has no 'encoder' group (a store written without its encoder's "
            "metadata); open its root with group=None")):
        xr.open_dataset(url, engine="nest", group="encoder")
