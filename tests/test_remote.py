"""Remote stores: one contract run against local, memory, S3 (moto), GCS (emulator) and HTTP.

Servers are started on 127.0.0.1 by ``tests/servers.py`` and stopped at the end; request
counts and bytes are what the servers actually served.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nest_data
from nest_data._cache import ChunkCache
from nest_data._storage import RETRIES, make_store
from nest_data.errors import (
    LocationError,
    StoreNotFoundError,
)

from .backends import KEYS, Backend, chunk_requests, open_entry
from .servers import HTTPServer, S3Server

pytest.importorskip("s3fs")
pytest.importorskip("gcsfs")
pytest.importorskip("aiohttp")


class TestContract:
    """The same checks for every backend."""

    def test_values_equal_local(self, backend: Backend, chunked: Path) -> None:
        local = nest_data.open(location=str(chunked), **KEYS)
        remote = open_entry(backend)
        local_url = backend.name in ("local",)
        assert remote.chunks[0] == ((4,) * 7 + (2,) if local_url else (30,))  # 8 per task
        np.testing.assert_array_equal(remote.values, local.values)
        np.testing.assert_array_equal(remote.ncsnr.values, local.ncsnr.values)
        assert list(remote.concept.values) == list(local.concept.values)
        assert remote.attrs == local.attrs

    def test_open_reads_metadata_only(self, backend: Backend) -> None:
        if backend.server is None:
            pytest.skip(f"{backend.name}: no server whose requests could be counted")
        backend.reset()
        da = open_entry(backend)
        requests = backend.requests()
        assert not chunk_requests(requests), [r.path for r in requests]
        gets = [r for r in requests if r.method == "GET"]
        # one GET for the consolidated metadata, one per coordinate array (the labels);
        # s3fs adds a zero-byte HEAD before each GET
        assert sum(r.path.endswith("/zarr.json") for r in gets) == 1
        assert len(gets) <= len(da.coords) + 1, [r.path for r in gets]
        assert all(r.bytes_sent == 0 for r in requests if r.method == "HEAD")
        assert sum(r.bytes_sent for r in requests) < 100_000

    def test_open_without_labels_is_one_request(self, backend: Backend) -> None:
        if backend.server is None:
            pytest.skip(f"{backend.name}: no server whose requests could be counted")
        backend.reset()
        da = open_entry(backend, load_labels=False)
        gets = [r for r in backend.requests() if r.method == "GET"]
        assert [r.path.rsplit("/", 1)[-1] for r in gets] == ["zarr.json"]
        assert da.sizes == {"image": 30, "voxel": 1350}
        assert float(da.ncsnr.max()) > 0  # labels still there, read on use

    def test_one_image_reads_one_chunk(self, backend: Backend, chunked: Path) -> None:
        da = open_entry(backend)
        backend.reset()
        row = da.isel(image=9).values
        np.testing.assert_array_equal(row, nest_data.open(location=str(chunked),
                                                          **KEYS).isel(image=9).values)
        if backend.server is None:
            return
        chunks = chunk_requests(backend.requests())
        assert [r.path.rsplit("/", 3)[-3:] for r in chunks] == [["c", "2", "0"]]
        chunk_file = chunked / nest_data.catalog().resolve(**KEYS).path / "responses/c/2/0"
        assert chunks[0].bytes_sent == chunk_file.stat().st_size

    def test_cache_second_read_makes_no_request(self, backend: Backend, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("NEST_DATA_CACHE_DIR", str(tmp_path))
        first = open_entry(backend, cache=True).isel(image=slice(0, 8)).values
        backend.reset()
        again = open_entry(backend, cache=True).isel(image=slice(0, 8)).values
        np.testing.assert_array_equal(first, again)
        if backend.name in ("local",):
            assert not (tmp_path / "chunks").exists()  # local stores are never cached
            return
        info = ChunkCache().info()
        assert info.objects >= 2  # two chunks of responses, plus coordinates
        if backend.server is not None:
            assert not chunk_requests(backend.requests())


def test_unused_storage_options_are_an_error() -> None:
    with pytest.raises(LocationError, match=r"storage options \['project'\] would go unused "
                                            r"for s3:// URLs .* anon=True for S3, token='anon'"):
        make_store("s3://bucket/x.zarr", {"project": "my-gcp-project"})
    with pytest.raises(LocationError, match=r"\['anon'\] would go unused for gs://"):
        make_store("gs://bucket/x.zarr", {"anon": True})
    make_store("s3://bucket/x.zarr", {"anon": True})  # valid: no error, nothing fetched
    with pytest.raises(LocationError, match=r"\['hedaers'\] would go unused for https://"):
        make_store("https://example.org/x.zarr", {"hedaers": {}})


def test_http_options_reach_every_request(chunked: Path) -> None:
    # fsspec's HTTP file system hands unnamed options to aiohttp with each request
    import aiohttp

    with HTTPServer() as server:
        server.upload(chunked)
        for options, sent in [({"headers": {"Authorization": "Bearer t0ken"}}, "Bearer t0ken"),
                              ({"auth": aiohttp.BasicAuth("ada", "pw")}, "Basic YWRhOnB3")]:
            server.reset()
            da = nest_data.open(location=server.url, storage_options=options, **KEYS)
            _ = da.isel(image=0).values
            assert {r.authorization for r in server.requests} == {sent}


def test_retries_only_where_the_file_system_has_none() -> None:
    # s3fs and gcsfs retry on their own; HTTP (fsspec) does not, so nest-data does
    assert make_store("s3://bucket/x.zarr", {"anon": True}).retries == 0
    assert make_store("gs://bucket/x.zarr", {"token": "anon"}).retries == 0
    assert make_store("https://example.org/x.zarr").retries == RETRIES


def test_missing_bucket_names_url_and_checks() -> None:
    with S3Server() as server:
        missing = server.missing_url
        with pytest.raises(StoreNotFoundError) as err:
            nest_data.open(location=missing, storage_options=server.storage_options, **KEYS)
    message = str(err.value)
    assert missing in message and "bucket exists" in message
    assert "anon=True for S3, token='anon' for GCS" in message


def test_convert_and_demo_publish_to_s3(ned_src: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nest_data.converters import convert_ned

    with S3Server() as server:
        dest = f"s3://{server.url.split('://')[1].split('/')[0]}/published"
        report = convert_ned(ned_src, dest, roi="V1", subject=1, imageset="things", workers=1,
                             storage_options=server.storage_options)
        assert len(report.converted) == 1
        da = nest_data.open(location=dest, storage_options=server.storage_options, **KEYS)
        assert da.sizes == {"image": 30, "voxel": 1350}
        assert nest_data.verify(dest, storage_options=server.storage_options).ok
        again = convert_ned(ned_src, dest, roi="V1", subject=1, imageset="things", workers=1,
                            storage_options=server.storage_options)
        assert again.skipped == [report.converted[0]]

        # An upload that dies midway leaves no visible store.
        import s3fs

        calls = {"n": 0}
        real_put_file = s3fs.S3FileSystem._put_file

        async def flaky(self: Any, lpath: str, rpath: str, *a: Any, **k: Any) -> Any:
            calls["n"] += 1
            if calls["n"] > 3:
                raise ConnectionResetError("network died")
            return await real_put_file(self, lpath, rpath, *a, **k)

        monkeypatch.setattr(s3fs.S3FileSystem, "_put_file", flaky)
        with pytest.raises(nest_data.ConversionError):
            convert_ned(ned_src, dest, roi="FFA-1", subject=1, imageset="things", workers=1,
                        storage_options=server.storage_options)
        monkeypatch.undo()
        with pytest.raises(StoreNotFoundError):
            nest_data.open(location=dest, storage_options=server.storage_options,
                           imageset="things", subject=1, roi="FFA-1")


def test_mirror_from_http(chunked: Path, tmp_path: Path) -> None:
    with HTTPServer() as server:
        server.upload(chunked)
        report = nest_data.mirror(tmp_path / "copy", location=server.url, **KEYS)
        assert report.copied == ["fmri/nsd/fwrf things sub-01 V1"] and report.bytes > 0
        copy = nest_data.open(location=str(tmp_path / "copy"), **KEYS)
        np.testing.assert_array_equal(copy.values,
                                      nest_data.open(location=str(chunked), **KEYS).values)
        assert nest_data.verify(tmp_path / "copy").ok
        server.reset()
        again = nest_data.mirror(tmp_path / "copy", location=server.url, **KEYS)
        assert again.skipped == report.copied
        assert not chunk_requests(server.requests)
        # A source object that does not match its checksum aborts that entry, writes nothing.
        key = nest_data.catalog().resolve(**KEYS).path + "/responses/c/3/0"
        server.tamper(key, b"tampered")
        with pytest.raises(nest_data.NestDataError, match="responses/c/3/0 has checksum"):
            nest_data.mirror(tmp_path / "other", location=server.url, **KEYS)
        assert not (tmp_path / "other" / "modality-fmri").exists()


def test_cache_cli_and_eviction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    from nest_data._cli import main

    monkeypatch.setenv("NEST_DATA_CACHE_DIR", str(tmp_path))
    cache = ChunkCache(max_bytes=1000)
    digests = []
    for i in range(5):
        data = bytes([i]) * 300
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        digests.append(digest)
        cache.put(digest, data)
        if i == 1:
            assert cache.get(digests[0]) is not None  # a hit makes 0 the most recent
    info = cache.info()
    assert info.bytes <= 900
    assert cache.get(digests[1]) is None  # least recently used went first
    assert cache.get(digests[4]) is not None
    assert main(["cache", "info"]) == 0
    assert f"{tmp_path / 'chunks'}: {info.objects} objects" in capsys.readouterr().out
    assert main(["cache", "clear"]) == 0
    assert ChunkCache().info().objects == 0
    shutil.rmtree(tmp_path / "chunks", ignore_errors=True)


def test_catalog_location_on_s3_behaves_like_local(chunked: Path) -> None:
    with S3Server() as server:
        server.upload(chunked)
        cat = nest_data.catalog()
        cat.add_location("lab", server.url, server.storage_options)
        da = nest_data.open(location="lab", catalog=cat, **KEYS)
        local = nest_data.open(location=str(chunked), **KEYS)
        np.testing.assert_array_equal(da.values, local.values)
        assert da.attrs == local.attrs


def test_mirror_resumes_inside_an_entry(chunked: Path, tmp_path: Path) -> None:
    key = nest_data.catalog().resolve(**KEYS).path + "/responses/c/6/0"
    with HTTPServer() as server:
        server.upload(chunked)
        original = (chunked / key).read_bytes()
        server.tamper(key, b"broken")  # the first run fails on this object only
        with pytest.raises(nest_data.NestDataError, match="responses/c/6/0 has checksum"):
            nest_data.mirror(tmp_path, location=server.url, workers=1, **KEYS)
        assert not (tmp_path / "modality-fmri").exists()  # nothing visible
        server.tamper(key, original)
        server.reset()
        report = nest_data.mirror(tmp_path, location=server.url, workers=1, **KEYS)
        fetched = [r.path for r in chunk_requests(server.requests)]
    # only the object that failed is fetched again; the others were kept from the first run
    assert fetched == ["/root/" + key]
    assert report.copied == ["fmri/nsd/fwrf things sub-01 V1"]
    assert nest_data.verify(tmp_path).ok


def test_weights_and_generated_stores_on_s3(tmp_path: Path) -> None:
    """Weights converted straight to S3 encode like local ones; generate writes to S3 too."""
    pytest.importorskip("torch")
    from nest_data.converters.weights import convert_weights
    from nest_data.synthetic import test_images, write_fwrf_weights, write_image_folder

    write_fwrf_weights(tmp_path / "nest", 1, "V1", n_voxels=12)
    convert_weights(tmp_path / "nest", tmp_path / "local", trust_pickles=True)
    images = test_images(5, 48, seed=1)
    write_image_folder(tmp_path / "imgs", images)
    with S3Server() as server:
        opts = dict(server.storage_options)
        convert_weights(tmp_path / "nest", server.url, trust_pickles=True, storage_options=opts)
        remote = nest_data.encode(images, subject=1, roi="V1", location=server.url,
                                  storage_options=opts, cache=False)
        local = nest_data.encode(images, subject=1, roi="V1", location=str(tmp_path / "local"),
                                 cache=False)
        np.testing.assert_array_equal(remote.values, local.values)
        assert remote.attrs["weights_sha256"] == local.attrs["weights_sha256"]
        url = nest_data.generate(tmp_path / "imgs", server.url, imageset="mine", subject=1,
                                 roi="V1", location=server.url, storage_options=opts,
                                 chunk_images=2)
        generated = nest_data.open_store(url, storage_options=opts)
        np.testing.assert_allclose(generated.values, local.values, rtol=1e-5, atol=1e-6)
        assert nest_data.verify(server.url, storage_options=opts).ok


def test_chunk_cache_pickles_for_dask_workers(tmp_path: Path) -> None:
    """A store travels to distributed workers with its cache (whose lock cannot be pickled)."""
    import pickle

    cache = ChunkCache(tmp_path, max_bytes="1MB")
    cache.put("sha256:" + "cd" * 32, b"chunk")
    copy = pickle.loads(pickle.dumps(cache))
    assert (copy.path, copy.max_bytes) == (cache.path, cache.max_bytes)
    assert copy.get("sha256:" + "cd" * 32) == b"chunk"
