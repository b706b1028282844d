"""Remote stores: one contract run against local, memory, S3 (moto), GCS (emulator) and HTTP.

Servers are started on 127.0.0.1 by ``tests/servers.py`` and stopped at the end; request
counts and bytes are what the servers actually served.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest

import nest_data
from nest_data._cache import ChunkCache
from nest_data._storage import make_store
from nest_data._store import DATA_VAR, write_entry
from nest_data.converters._pickle import load_npy_dict
from nest_data.converters.ned import discover_ned, entry_data
from nest_data.errors import (
    ChecksumError,
    LocationError,
    MissingObjectError,
    StoreNotFoundError,
)

from .servers import GCSServer, HTTPServer, S3Server

pytest.importorskip("s3fs")
pytest.importorskip("gcsfs")
pytest.importorskip("aiohttp")

KEYS = {"imageset": "things", "subject": 1, "roi": "V1"}
ROWS = 4  # images per chunk in the test store: 30 images -> 8 chunks


@pytest.fixture(scope="module")
def chunked(ned_src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local root with things sub-01 V1 stored in chunks of 4 images (8 chunks)."""
    import h5py

    root = tmp_path_factory.mktemp("chunked")
    (source,) = discover_ned(ned_src, **KEYS)
    with h5py.File(source.h5) as f:
        data = entry_data(source, f["synthetic_neural_responses"], load_npy_dict(source.npy),
                          units="a.u.")
        write_entry(data, root, source.entry.path, chunk_bytes=ROWS * 1350 * 4)
    return root


class Backend:
    """A served copy of the ``chunked`` root, and how to read what its server saw."""

    def __init__(self, name: str, url: str, options: dict[str, Any], server: Any) -> None:
        self.name, self.url, self.options, self.server = name, url, options, server

    def requests(self) -> list[Any]:
        return [] if self.server is None else self.server.requests

    def reset(self) -> None:
        if self.server is not None:
            self.server.reset()


@pytest.fixture(scope="module", params=["local", "memory", "s3", "gcs", "http"])
def backend(request: pytest.FixtureRequest, chunked: Path) -> Iterator[Backend]:
    name = request.param
    if name == "local":
        yield Backend(name, str(chunked), {}, None)
        return
    if name == "memory":
        root = f"memory://nest-{uuid.uuid4().hex}"
        fs = fsspec.filesystem("memory")
        fs.put(str(chunked) + "/", root.removeprefix("memory://") + "/", recursive=True)
        yield Backend(name, root, {}, None)
        fs.rm(root.removeprefix("memory://"), recursive=True)
        return
    server_cls = {"s3": S3Server, "gcs": GCSServer, "http": HTTPServer}[name]
    with server_cls() as server:
        server.upload(chunked)
        yield Backend(name, server.url, dict(server.storage_options), server)


def _open(backend: Backend, **kw: Any) -> Any:
    return nest_data.open(location=backend.url, storage_options=backend.options, **KEYS, **kw)


def _chunk_requests(requests: list[Any]) -> list[Any]:
    return [r for r in requests if f"/{DATA_VAR}/c/" in r.path and r.method == "GET"]


class TestContract:
    """The same checks for every backend."""

    def test_values_equal_local(self, backend: Backend, chunked: Path) -> None:
        local = nest_data.open(location=str(chunked), **KEYS)
        remote = _open(backend)
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
        da = _open(backend)
        requests = backend.requests()
        assert not _chunk_requests(requests), [r.path for r in requests]
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
        da = _open(backend, load_labels=False)
        gets = [r for r in backend.requests() if r.method == "GET"]
        assert [r.path.rsplit("/", 1)[-1] for r in gets] == ["zarr.json"]
        assert da.sizes == {"image": 30, "voxel": 1350}
        assert float(da.ncsnr.max()) > 0  # labels still there, read on use

    def test_one_image_reads_one_chunk(self, backend: Backend, chunked: Path) -> None:
        da = _open(backend)
        backend.reset()
        row = da.isel(image=9).values
        np.testing.assert_array_equal(row, nest_data.open(location=str(chunked),
                                                          **KEYS).isel(image=9).values)
        if backend.server is None:
            return
        chunks = _chunk_requests(backend.requests())
        assert [r.path.rsplit("/", 3)[-3:] for r in chunks] == [["c", "2", "0"]]
        chunk_file = chunked / nest_data.catalog().resolve(**KEYS).path / "responses/c/2/0"
        assert chunks[0].bytes_sent == chunk_file.stat().st_size

    def test_cache_second_read_makes_no_request(self, backend: Backend, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("NEST_DATA_CACHE_DIR", str(tmp_path))
        first = _open(backend, cache=True).isel(image=slice(0, 8)).values
        backend.reset()
        again = _open(backend, cache=True).isel(image=slice(0, 8)).values
        np.testing.assert_array_equal(first, again)
        if backend.name in ("local",):
            assert not (tmp_path / "chunks").exists()  # local stores are never cached
            return
        info = ChunkCache().info()
        assert info.objects >= 2  # two chunks of responses, plus coordinates
        if backend.server is not None:
            assert not _chunk_requests(backend.requests())

    def test_verify_detects_tampered_chunk(self, backend: Backend, chunked: Path) -> None:
        if backend.server is None:
            pytest.skip("tampering needs a served copy (the local one is tested in "
                        "test_convert)")
        key = nest_data.catalog().resolve(**KEYS).path + "/responses/c/5/0"
        original = (chunked / key).read_bytes()
        backend.server.tamper(key, original[:-4] + b"\0\0\0\0")
        try:
            with pytest.raises(ChecksumError, match="object responses/c/5/0 of .* does not "
                                                    "match its recorded checksum"):
                _ = _open(backend, verify=True).isel(image=21).values
            _ = _open(backend, verify=True).isel(image=0).values  # other chunks still fine
            report = nest_data.verify(backend.url, storage_options=backend.options)
            assert report.stores == 1
            (problem,) = report.problems
            assert "object responses/c/5/0 (images 20-23) has checksum" in problem.detail
        finally:
            backend.server.tamper(key, original)


    @pytest.mark.parametrize("cache", [False, True])
    def test_missing_object_is_an_error_not_a_fill_value(self, backend: Backend, chunked: Path,
                                                         tmp_path: Path, cache: bool,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
        store = nest_data.catalog().resolve(**KEYS).path
        cases = [("responses/c/1/0", r" \(images 4-7\) is missing: the store's manifest "
                                     "lists it"),
                 ("ncsnr/c/0", " is missing: the store's manifest lists it")]
        for key, message in cases:
            # A fresh cache: an object cached (verified) before it was deleted is still good.
            monkeypatch.setenv("NEST_DATA_CACHE_DIR", str(tmp_path / key.replace("/", "-")))
            original = (chunked / store / key).read_bytes()
            _remove(backend, f"{store}/{key}")
            try:
                for verify in (False, True):
                    with pytest.raises(MissingObjectError, match=f"object {key} of .*{message}"):
                        _ = _open(backend, verify=verify, cache=cache).values
                report = nest_data.verify(backend.url, storage_options=backend.options)
                assert any(f"object {key}" in p.detail and "is missing" in p.detail
                           for p in report.problems)
            finally:
                _restore(backend, f"{store}/{key}", original)
        assert np.isfinite(_open(backend, cache=cache).values).all()  # whole again


def _remove(backend: Backend, key: str) -> None:
    if backend.name == "local":
        (Path(backend.url) / key).unlink()
    elif backend.name == "memory":
        fsspec.filesystem("memory").rm(f"{backend.url.removeprefix('memory://')}/{key}")
    else:
        backend.server.remove(key)


def _restore(backend: Backend, key: str, data: bytes) -> None:
    if backend.name == "local":
        (Path(backend.url) / key).write_bytes(data)
    elif backend.name == "memory":
        fsspec.filesystem("memory").pipe(f"{backend.url.removeprefix('memory://')}/{key}",
                                         data)
    else:
        backend.server.tamper(key, data)


def _read_with_cache(args: tuple[str, str]) -> tuple[str, int]:
    """Child process: read a whole entry through the shared disk cache."""
    import os

    url, cache_dir = args
    os.environ["NEST_DATA_CACHE_DIR"] = cache_dir
    values = nest_data.open(location=url, cache=True, **KEYS).values
    return hashlib.sha256(values.tobytes()).hexdigest(), os.getpid()


def test_cache_is_safe_for_concurrent_processes(chunked: Path, tmp_path: Path) -> None:
    import multiprocessing

    expected = hashlib.sha256(nest_data.open(location=str(chunked), **KEYS).values.tobytes()
                              ).hexdigest()
    with HTTPServer(latency=0.02) as server:
        server.upload(chunked)
        context = multiprocessing.get_context("spawn")
        with context.Pool(4) as pool:
            results = pool.map(_read_with_cache, [(server.url, str(tmp_path))] * 4)
    assert {digest for digest, _ in results} == {expected}
    assert len({pid for _, pid in results}) > 1
    files = [p for p in (tmp_path / "chunks").rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.startswith(".tmp-")]  # no torn or leftover files
    assert len(files) >= 8  # the 8 chunks of responses, at least
    for path in files:  # every cached object is whole: its content hashes to its name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name


def test_unused_storage_options_are_an_error() -> None:
    with pytest.raises(LocationError, match=r"storage options \['project'\] would go unused "
                                            r"for s3:// URLs .* anon=True for S3, token='anon'"):
        make_store("s3://bucket/x.zarr", {"project": "my-gcp-project"})
    with pytest.raises(LocationError, match=r"\['anon'\] would go unused for gs://"):
        make_store("gs://bucket/x.zarr", {"anon": True})
    make_store("s3://bucket/x.zarr", {"anon": True})  # valid: no error, nothing fetched


def test_missing_bucket_names_url_and_checks() -> None:
    with S3Server() as server:
        missing = server.missing_url
        with pytest.raises(StoreNotFoundError) as err:
            nest_data.open(location=missing, storage_options=server.storage_options, **KEYS)
    message = str(err.value)
    assert missing in message and "bucket exists" in message
    assert "anon=True for S3, token='anon' for GCS" in message


def test_http_faults_retry_to_correct_data(chunked: Path) -> None:
    local = nest_data.open(location=str(chunked), **KEYS).values
    with HTTPServer() as server:
        server.upload(chunked)
        server.fail_every = 3
        da = nest_data.open(location=server.url, **KEYS)
        np.testing.assert_array_equal(da.values, local)
        statuses = [r.status for r in server.requests]
        assert 503 in statuses and statuses.count(503) < len(statuses)
        server.reset()
        server.fail_every = 0
        server.fail_first = 50  # more failures than retries allow
        with pytest.raises(nest_data.RemoteReadError, match="failed 5 times .* Try again later"):
            nest_data.open(location=server.url, **KEYS)


def test_http_timeouts_are_retried(chunked: Path) -> None:
    import aiohttp

    local = nest_data.open(location=str(chunked), **KEYS).isel(image=0).values
    with HTTPServer(hang_every=4, hang_seconds=3) as server:
        server.upload(chunked)
        options = {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=0.5)}}
        da = nest_data.open(location=server.url, storage_options=options, **KEYS)
        np.testing.assert_array_equal(da.isel(image=0).values, local)


def test_http_server_ignoring_range_gives_correct_bytes(chunked: Path) -> None:
    from zarr.abc.store import RangeByteRequest
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    path = nest_data.catalog().resolve(**KEYS).path
    whole = (chunked / path / "responses/c/1/0").read_bytes()
    with HTTPServer(ignore_range=True) as server:
        server.upload(chunked)
        store = make_store(f"{server.url}/{path}")
        got = sync(store.get("responses/c/1/0", default_buffer_prototype(),
                             RangeByteRequest(10, 30)))
        assert got is not None and got.to_bytes() == whole[10:30]
        gets = [r for r in server.requests if r.method == "GET"]
        assert len(gets) == 1 and gets[0].status == 200 and gets[0].range  # no second fetch
        server.ignore_range = False
        server.reset()
        got = sync(store.get("responses/c/1/0", default_buffer_prototype(),
                             RangeByteRequest(10, 30)))
        assert got is not None and got.to_bytes() == whole[10:30]
        assert [r.status for r in server.requests] == [206]  # honoured: one ranged request


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
        assert not _chunk_requests(server.requests)
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
        da = cat.open(location="lab", **KEYS)
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
        fetched = [r.path for r in _chunk_requests(server.requests)]
    # only the object that failed is fetched again; the others were kept from the first run
    assert fetched == ["/root/" + key]
    assert report.copied == ["fmri/nsd/fwrf things sub-01 V1"]
    assert nest_data.verify(tmp_path).ok


def test_weights_and_generated_stores_on_s3(tmp_path: Path) -> None:
    """Weights converted straight to S3 encode like local ones; generate writes to S3 too."""
    pytest.importorskip("torch")
    from nest_data.converters.weights import convert_weights
    from nest_data.testing import test_images, write_fwrf_weights, write_image_folder

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


def _read_while_clearing(args: tuple[str, str, int]) -> str:
    """Child process: read an entry through the cache several times, or keep clearing it."""
    import os

    url, cache_dir, role = args
    os.environ["NEST_DATA_CACHE_DIR"] = cache_dir
    if role == 0:
        cache = ChunkCache()
        for _ in range(40):
            cache.clear()
        return "cleared"
    digests = set()
    for _ in range(4):
        values = nest_data.open(location=url, cache=True, **KEYS).values
        digests.add(hashlib.sha256(values.tobytes()).hexdigest())
    return ",".join(sorted(digests))


def test_cache_clear_and_eviction_never_fail_a_reader(chunked: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing

    expected = hashlib.sha256(nest_data.open(location=str(chunked), **KEYS).values.tobytes()
                              ).hexdigest()
    monkeypatch.setenv("NEST_DATA_CACHE_SIZE", "60KB")  # below one entry: evicts constantly
    with HTTPServer(latency=0.005) as server:
        server.upload(chunked)
        context = multiprocessing.get_context("spawn")
        with context.Pool(4) as pool:
            results = pool.map(_read_while_clearing,
                               [(server.url, str(tmp_path), role) for role in range(4)])
    assert results[0] == "cleared"
    assert results[1:] == [expected] * 3


def test_cache_hits_are_checked_and_damaged_entries_dropped(chunked: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    import logging

    monkeypatch.setenv("NEST_DATA_CACHE_DIR", str(tmp_path))
    expected = nest_data.open(location=str(chunked), **KEYS).values
    with HTTPServer() as server:
        server.upload(chunked)
        first = nest_data.open(location=server.url, cache=True, **KEYS).values
        files = sorted((tmp_path / "chunks").rglob("*"), key=lambda p: -p.stat().st_size)
        damaged = next(p for p in files if p.is_file())
        data = bytearray(damaged.read_bytes())
        data[-1] ^= 0xFF  # one flipped bit that still decodes, or not: never served
        damaged.write_bytes(bytes(data))
        server.reset()
        with caplog.at_level(logging.WARNING, logger="nest_data"):
            again = nest_data.open(location=server.url, cache=True, **KEYS).values
        assert f"cache file {damaged}" in caplog.text and "does not match its checksum" in (
            caplog.text)
        assert len(_chunk_requests(server.requests)) <= 1  # refetched that object only
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(again, expected)
    assert hashlib.sha256(damaged.read_bytes()).hexdigest() == damaged.name  # replaced


def test_chunk_cache_pickles_for_dask_workers(tmp_path: Path) -> None:
    """A store travels to distributed workers with its cache (whose lock cannot be pickled)."""
    import pickle

    cache = ChunkCache(tmp_path, max_bytes="1MB")
    cache.put("sha256:" + "cd" * 32, b"chunk")
    copy = pickle.loads(pickle.dumps(cache))
    assert (copy.path, copy.max_bytes) == (cache.path, cache.max_bytes)
    assert copy.get("sha256:" + "cd" * 32) == b"chunk"
