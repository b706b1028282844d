"""Fault injection: damaged, missing and tampered objects, flaky servers and a busy cache.

Every fault here once gave a wrong value or a foreign error; each now gives the right bytes or
one of nest-data's errors naming what is wrong.  The read-path faults run against every
backend (local, memory, S3, GCS, HTTP; see ``tests/conftest.py``).  Faults of the write path
and of bad input are tested next to the code they concern:

- a target that is not our store (a user's folder, a foreign Zarr group, a file, ``/proc``)
  and catalog paths that leave their root:
  ``test_convert.py::test_never_replaces_what_is_not_ours``,
  ``test_generate.py::test_never_replaces_a_users_folder``,
  ``test_generate.py::test_destination_that_is_a_file``,
  ``test_errors.py::test_bad_roots_and_catalogs_are_our_errors``;
- workers of a killed parent: ``test_convert.py::test_workers_stop_when_the_parent_is_killed``;
- output independent of the hash seed:
  ``test_generate.py::test_output_does_not_depend_on_the_hash_seed``;
- bad arguments: ``test_errors.py::test_bad_open_arguments_are_our_errors``,
  ``test_encode.py::test_no_cuda_and_decompression_bombs_are_our_errors``,
  ``test_generate.py::test_zarr_group_with_groups_where_arrays_belong``;
- zarr's own store contract: ``test_store_contract.py``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nest_data
from nest_data._cache import ChunkCache
from nest_data._storage import make_store
from nest_data.errors import (
    ChecksumError,
    MissingObjectError,
    StoreFormatError,
    StoreVersionError,
)

from .backends import (
    KEYS,
    Backend,
    chunk_requests,
    open_entry,
    remove_object,
    restore_object,
)
from .servers import HTTPServer

pytest.importorskip("s3fs")
pytest.importorskip("gcsfs")
pytest.importorskip("aiohttp")


def _nodes(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["consolidated_metadata"]["metadata"]  # type: ignore[no-any-return]


def _set(path: str, field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """An edit of one field of one node's metadata in a root zarr.json."""
    def edit(doc: dict[str, Any]) -> None:
        node = _nodes(doc)
        for part in path.split("."):
            node = node[int(part)] if part.isdigit() else node[part]
        node[field] = value
    return edit


def _older(edit: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    """The same edit in a store of format 2 (no recorded metadata checksums)."""
    def older(doc: dict[str, Any]) -> None:
        attrs = doc["attributes"]["nest_data"]
        attrs["format_version"] = 2
        del attrs["metadata"]
        edit(doc)
    return older


def _huge(doc: dict[str, Any]) -> None:
    """2**62 images, consistently across every array along ``image``."""
    for name, node in _nodes(doc).items():
        dims = node.get("dimension_names") or []
        if "image" in dims:
            node["shape"] = [2**62 if d == "image" else n
                             for d, n in zip(dims, node["shape"], strict=True)]
            if name != "responses":
                node["chunk_grid"]["configuration"]["chunk_shape"] = node["shape"]


_RESPONSE_BYTES = "responses.codecs.0.configuration.codecs.0.configuration"
_EDITED = "metadata of {} in its root zarr.json does not match the checksum recorded"
METADATA_EDITS: dict[str, tuple[Callable[[dict[str, Any]], None], type[Exception], str]] = {
    "responses int32": (_set("responses", "data_type", "int32"), StoreFormatError,
                        _EDITED.format("responses")),
    "responses big-endian": (_set(_RESPONSE_BYTES, "endian", "big"), StoreFormatError,
                             _EDITED.format("responses")),
    "ncsnr int32": (_set("ncsnr", "data_type", "int32"), StoreFormatError,
                    _EDITED.format("ncsnr")),
    "units edited": (_set("responses.attributes", "units", "mV"), StoreFormatError,
                     _EDITED.format("responses")),
    "format 99": (lambda doc: doc["attributes"]["nest_data"].update(format_version=99),
                  StoreVersionError, "store format 99, newer than this nest-data reads .* "
                                     "Upgrade nest-data"),
    "digests removed": (lambda doc: doc["attributes"]["nest_data"].pop("metadata"),
                        StoreFormatError, "recorded metadata checksums are not a mapping"),
    "format 2: responses int32": (_older(_set("responses", "data_type", "int32")),
                                  StoreFormatError, "responses: its data type is 'int32'"),
    "format 2: ncsnr big-endian": (_older(_set("ncsnr.codecs.0.configuration", "endian",
                                               "big")),
                                   StoreFormatError, "ncsnr: its bytes codec is big-endian"),
    "format 2: responses shape": (_older(_set("responses", "shape", [31, 1350])),
                                  StoreFormatError, "responses: dimension 'image' has size 31, "
                                                    "but .* gives it size 30"),
    "format 2: huge shape": (_older(_huge), StoreFormatError,
                             "makes 1152921504606846976 shards, but the manifest lists 8"),
    "format 2: inner chunks of one value": (
        _older(_set("responses.codecs.0.configuration", "chunk_shape", [1, 1])),
        StoreFormatError, "not the sharded layout of its format"),
}



class TestObjectFaults:
    """The same faults on every backend."""

    def test_flipped_byte_is_an_error_without_verify(self, backend: Backend, chunked: Path
                                                     ) -> None:
        """Every inner chunk carries a CRC-32C that is checked on every read."""
        store = nest_data.catalog().resolve(**KEYS).path
        key = f"{store}/responses/c/2/0"
        original = (chunked / key).read_bytes()
        damaged = bytearray(original)
        damaged[100] ^= 0x10  # a value's bit: still a plausible float32
        restore_object(backend, key, bytes(damaged))
        try:
            with pytest.raises(ChecksumError, match=r"object responses/c/2/0 of .* \(images "
                                                    r"8-11\): inner chunk 0 fails its CRC-32C"):
                _ = open_entry(backend).values
            np.testing.assert_array_equal(  # the other shards still read
                open_entry(backend).isel(image=slice(0, 8)).values,
                nest_data.open(location=str(chunked), **KEYS).isel(image=slice(0, 8)).values)
        finally:
            restore_object(backend, key, original)

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
                _ = open_entry(backend, verify=True).isel(image=21).values
            _ = open_entry(backend, verify=True).isel(image=0).values  # other chunks still fine
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
            remove_object(backend, f"{store}/{key}")
            try:
                for verify in (False, True):
                    with pytest.raises(MissingObjectError, match=f"object {key} of .*{message}"):
                        _ = open_entry(backend, verify=verify, cache=cache).values
                report = nest_data.verify(backend.url, storage_options=backend.options)
                assert any(f"object {key}" in p.detail and "is missing" in p.detail
                           for p in report.problems)
            finally:
                restore_object(backend, f"{store}/{key}", original)
        assert np.isfinite(open_entry(backend, cache=cache).values).all()  # whole again


    def test_flipped_label_byte_is_an_error_without_verify(self, backend: Backend,
                                                           chunked: Path) -> None:
        """Labels (zstd, no checksum of their own) are checked against the manifest's
        SHA-256 on every read."""
        key = nest_data.catalog().resolve(**KEYS).path + "/ncsnr/c/0"
        original = (chunked / key).read_bytes()
        damaged = bytearray(original)
        damaged[-3] ^= 0x01
        restore_object(backend, key, bytes(damaged))
        try:
            for kw in ({}, {"load_labels": False}):
                with pytest.raises(ChecksumError, match="object ncsnr/c/0 of .* does not match "
                                                        "its recorded checksum"):
                    _ = open_entry(backend, **kw).ncsnr.values
        finally:
            restore_object(backend, key, original)
        assert np.isfinite(open_entry(backend).ncsnr.values).all()

    @pytest.mark.parametrize("case", sorted(METADATA_EDITS))
    def test_edited_metadata_is_an_error_before_any_value(self, backend: Backend,
                                                          chunked: Path, case: str) -> None:
        """The root zarr.json decides how every byte is decoded: it is checked on open."""
        key = nest_data.catalog().resolve(**KEYS).path + "/zarr.json"
        original = (chunked / key).read_bytes()
        edit, error, message = METADATA_EDITS[case]
        doc = json.loads(original)
        edit(doc)
        restore_object(backend, key, json.dumps(doc).encode())
        try:
            for kw in ({}, {"verify": True}):
                with pytest.raises(error, match=message):
                    _ = open_entry(backend, **kw).values
        finally:
            restore_object(backend, key, original)


def test_verify_checks_the_metadata_documents(chunked: Path, tmp_path: Path) -> None:
    """verify covers the root zarr.json (as every open does) and every node's own
    zarr.json, which other Zarr readers (zarr-python, tensorstore, zarrs) read."""
    import shutil

    root = Path(shutil.copytree(chunked, tmp_path / "root"))
    store = root / nest_data.catalog().resolve(**KEYS).path
    assert nest_data.verify(root, show_progress=False).ok
    node = json.loads((store / "ncsnr" / "zarr.json").read_text())
    node["data_type"] = "int32"
    (store / "ncsnr" / "zarr.json").write_text(json.dumps(node))
    (problem,) = nest_data.verify(root, show_progress=False).problems
    assert problem.array == "ncsnr" and "differs from the consolidated copy" in problem.detail
    doc = json.loads((store / "zarr.json").read_text())
    _set("responses", "data_type", "int32")(doc)
    (store / "zarr.json").write_text(json.dumps(doc))
    details = [str(p) for p in nest_data.verify(root, show_progress=False).problems]
    assert any("zarr.json: " in d and "metadata of responses" in d for d in details), details
    assert any("responses/zarr.json differs" in d for d in details), details


def test_engine_checks_labels_and_metadata(chunked: Path, tmp_path: Path) -> None:
    import shutil

    import xarray as xr

    store = Path(shutil.copytree(chunked / nest_data.catalog().resolve(**KEYS).path,
                                 tmp_path / "s.zarr"))
    label = store / "ncsnr" / "c" / "0"
    damaged = bytearray(label.read_bytes())
    damaged[-3] ^= 0x01
    label.write_bytes(bytes(damaged))
    with pytest.raises(ChecksumError, match="object ncsnr/c/0 of"):
        _ = xr.open_dataset(store, engine="nest").ncsnr.values
    doc = json.loads((store / "zarr.json").read_text())
    doc["attributes"]["nest_data"]["format_version"] = 99
    (store / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(StoreVersionError, match="Upgrade nest-data"):
        xr.open_dataset(store, engine="nest")


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


def test_http_stalled_body_times_out_retries_then_names_the_object(chunked: Path) -> None:
    """A server that sends half an answer and then holds the connection: the read (idle)
    timeout ends the wait, the read is retried, and a server that always stalls is a
    RemoteReadError naming the object, the URL and the setting, after a bounded time."""
    import time

    local = nest_data.open(location=str(chunked), **KEYS)
    with HTTPServer(stall_every=3, stall_seconds=60) as server:
        server.upload(chunked)
        with nest_data.set_options(read_timeout=0.5):
            da = nest_data.open(location=server.url, **KEYS)
            np.testing.assert_array_equal(nest_data.select_images(da, [5]).values,
                                          local.isel(image=[5]).values)
            np.testing.assert_array_equal(da.values, local.values)
            assert any(r.bytes_sent and r.status == 200 for r in server.requests)
            server.reset()
            server.stall_every = 1  # every answer stalls
            started = time.monotonic()
            with pytest.raises(nest_data.RemoteReadError,
                               match=r"reading zarr\.json from http://127\.0\.0\.1:\d+/.*"
                                     r"failed 5 times .*no bytes within the read timeout; "
                                     r"raise it with nest_data\.set_options\(read_timeout"):
                nest_data.open(location=server.url, **KEYS)
            assert time.monotonic() - started < 20  # 5 tries of 0.5 s, and the backoff
            server.stall_every = 0


def test_timeouts_are_options_with_our_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """The defaults, the environment, set_options (for a block), and bad values refused."""
    from nest_data import _config
    from nest_data._urls import with_timeouts

    assert _config.timeouts() == {"connect_timeout": 10.0, "read_timeout": 30.0}
    monkeypatch.setenv("NEST_DATA_READ_TIMEOUT", "7.5")
    assert _config.timeouts()["read_timeout"] == 7.5
    with nest_data.set_options(read_timeout=2, connect_timeout=1):
        assert _config.timeouts() == {"connect_timeout": 1.0, "read_timeout": 2.0}
        timeout = with_timeouts("https://x.org/nest", {})["client_kwargs"]["timeout"]
        assert (timeout.sock_read, timeout.sock_connect, timeout.total) == (2.0, 1.0, None)
        assert with_timeouts("gs://b/nest", {})["session_kwargs"]["timeout"].sock_read == 2.0
        assert with_timeouts("s3://b/nest", {"config_kwargs": {"read_timeout": 9}})[
            "config_kwargs"] == {"connect_timeout": 1.0, "read_timeout": 9}
    assert _config.timeouts()["read_timeout"] == 7.5  # the block ended
    monkeypatch.setenv("NEST_DATA_READ_TIMEOUT", "soon")
    with pytest.raises(nest_data.InputError, match="NEST_DATA_READ_TIMEOUT='soon' is not a "
                                                   "timeout; give a number of seconds above 0"):
        _config.timeouts()
    for bad in (0, -1, float("nan"), float("inf"), "x", True):
        with pytest.raises(nest_data.InputError, match="read_timeout=.* is not a timeout"):
            nest_data.set_options(read_timeout=bad)  # type: ignore[arg-type]


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
        assert len(chunk_requests(server.requests)) <= 1  # refetched that object only
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(again, expected)
    assert hashlib.sha256(damaged.read_bytes()).hexdigest() == damaged.name  # replaced

