"""Fault injection: every promise nest-data makes about damage, hangs, writers and outputs.

Every fault here once gave a wrong value, a hang or a foreign error; each now gives the right
bytes or one of nest-data's errors naming what is wrong and how to fix it.

Reads (against every backend: local, memory, S3, GCS, HTTP; see ``tests/conftest.py``):

- a flipped byte in a response chunk (its CRC-32C) or in a label (its SHA-256 in the
  manifest) is an error on every read, ``verify`` or not; a missing object is an error,
  never a fill value;
- an edited root ``zarr.json`` (a data type, a byte order, a shape, a chunk grid, any
  attribute, a newer format) is refused on open, before any value is read; ``verify`` also
  compares every node's own ``zarr.json`` with the consolidated copy;
- flaky, slow, stalling and Range-ignoring HTTP servers: retries, read and connect timeouts,
  then an error naming the object and the URL;
- the disk cache: shared by processes, cleared or evicted under readers, damaged entries
  dropped.

Writers (``convert``, ``generate``, ``mirror``, the demo build):

- one writer per destination: a second is refused, naming the first (two real processes);
- a store or staging folder holding files nest-data did not write keeps them;
- a writer killed and resumed leaves no staging behind;
- a full disk is a ``NoSpaceError`` naming the destination and the space needed, with
  nothing half-visible and no traceback.

Outputs: ``encode --out`` writes whole or not at all and replaces only what nest-data wrote;
bad demo arguments are refused before anything is written.

Faults tested next to the code they concern: a target that is not our store
(``test_convert.py::test_never_replaces_what_is_not_ours``,
``test_generate.py::test_never_replaces_a_users_folder``,
``test_generate.py::test_destination_that_is_a_file``,
``test_errors.py::test_bad_roots_and_catalogs_are_our_errors``); workers of a killed parent
(``test_convert.py::test_workers_stop_when_the_parent_is_killed``); output independent of the
hash seed (``test_generate.py::test_output_does_not_depend_on_the_hash_seed``); bad arguments
(``test_errors.py``, ``test_hostile_inputs.py``,
``test_encode.py::test_no_cuda_and_decompression_bombs_are_our_errors``); credentials never
shown or stored (``test_credentials.py``); zarr's own store contract
(``test_store_contract.py``).
"""

from __future__ import annotations

import asyncio
import errno
import gc
import hashlib
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

import nest_data
from nest_data._cache import ChunkCache
from nest_data._cli import main as cli
from nest_data._index import read_index
from nest_data._locks import WRITER_LOCK_FILE, writer_lock
from nest_data._output import WRITER_ATTR, write_output
from nest_data._staging import STAGE_MARKER, STAGING_DIR, check_replaceable
from nest_data._storage import make_store
from nest_data.converters import convert_ned
from nest_data.errors import (
    ChecksumError,
    MissingObjectError,
    NoSpaceError,
    StoreFormatError,
    StoreVersionError,
    TargetExistsError,
    WriterLockError,
)
from nest_data.synthetic import test_images

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
pytest.importorskip("torch")


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

    def test_a_missing_bucket_is_our_error_for_verify_and_mirror(self, backend: Backend,
                                                                 tmp_path: Path) -> None:
        if backend.name not in ("s3", "gcs"):
            pytest.skip("only buckets can be missing")
        missing = backend.server.missing_url
        for call in (lambda: nest_data.verify(missing, storage_options=backend.options),
                     lambda: nest_data.mirror(tmp_path / "copy", location=missing,
                                              storage_options=backend.options, **KEYS)):
            with pytest.raises(nest_data.StoreNotFoundError,
                               match=f"{missing} does not exist .*check the URL"):
                call()
        assert not (tmp_path / "copy").exists() or not any((tmp_path / "copy").rglob("*.zarr"))

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


# --------------------------------------------------------------------------------------
# Writers: one writer per destination, files nest-data did not write, kill and resume,
# a full disk.
# --------------------------------------------------------------------------------------

WAIT_S = 120  # longest wait for a child process to reach the point the test needs
V1 = {"imageset": "things", "subject": 1, "roi": "V1"}


def _store(root: Path, **keys: Any) -> Path:
    return root / nest_data.catalog().resolve(**keys).path


def _staged(root: Path) -> list[str]:
    folder = root / STAGING_DIR
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _wait_for(path: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate(timeout=30)
            pytest.fail(f"the child never got there (rc {proc.returncode}): {err.decode()}")
        time.sleep(0.02)


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nest_data.synthetic import test_images, write_image_folder

    folder = tmp_path_factory.mktemp("images")
    write_image_folder(folder, test_images(6, 48, seed=3))
    return folder


class _Disk:
    """Bytes that still fit on a simulated disk; writing more raises ENOSPC."""

    def __init__(self, folder: Path, free: int, where: str) -> None:
        self.folder, self.free, self.where = str(folder), free, where
        self._lock = threading.Lock()

    def counts(self, file: Any, mode: str) -> bool:
        if isinstance(file, int) or not any(c in mode for c in "wax+"):
            return False
        path = str(Path(file).absolute())
        return path.startswith(self.folder) and self.where in path

    def take(self, n: int) -> None:
        with self._lock:
            if n > self.free:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.free -= n


class _Filling:
    """A file on the simulated disk: ``write`` takes its bytes from the free space first."""

    def __init__(self, file: Any, disk: _Disk) -> None:
        self._file, self._disk = file, disk

    def write(self, data: Any) -> int:
        self._disk.take(len(data.encode()) if isinstance(data, str) else memoryview(data).nbytes)
        return int(self._file.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def __enter__(self) -> _Filling:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``full_disk(folder, free=0, where="")``: writes of more than ``free`` bytes in all to
    files under ``folder`` (whose path contains ``where``) fail with ENOSPC, as on a full
    disk; ``monkeypatch.undo()`` frees the space.  Patches ``open`` (pathlib, zarr's local
    store and nest-data's writers all open files through it)."""

    def fill(folder: Path, free: int = 0, where: str = "") -> None:
        disk = _Disk(folder, free, where)
        real = io.open

        def opened(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            handle = real(file, mode, *args, **kwargs)
            return _Filling(handle, disk) if disk.counts(file, mode) else handle

        monkeypatch.setattr(io, "open", opened)
        monkeypatch.setattr("builtins.open", opened)

    return fill


# ------------------------------------------------------------------------------ one writer


def test_writer_lock_names_its_holder_nests_and_refuses_other_threads(tmp_path: Path) -> None:
    refused: list[BaseException] = []

    def other_writer() -> None:
        try:
            with writer_lock(tmp_path, "mirror"):
                pass
        except BaseException as exc:
            refused.append(exc)

    with writer_lock(tmp_path, "generate"):
        with writer_lock(tmp_path, "convert ned"):  # the same thread: passes
            pass
        thread = threading.Thread(target=other_writer)
        thread.start()
        thread.join(timeout=30)
        holder = (tmp_path / WRITER_LOCK_FILE).read_text()
    assert len(refused) == 1 and isinstance(refused[0], WriterLockError)
    assert isinstance(refused[0], BlockingIOError) and isinstance(refused[0],
                                                                  nest_data.NestDataError)
    message = str(refused[0])
    assert message.startswith(f"another nest-data writer is writing to {tmp_path}: generate "
                              f"(pid {os.getpid()} on {socket.gethostname()}, "
                              "started ")
    assert "wait for it to finish, or stop it, then run this mirror again" in message
    assert '"command": "generate"' in holder
    assert (tmp_path / WRITER_LOCK_FILE).read_text() == ""  # released: no holder recorded
    with writer_lock(tmp_path, "mirror"):  # free again
        pass


def test_second_writer_process_is_refused_and_the_first_store_verifies(
        fwrf_weights: Path, images: Path, ned_src: Path, collection: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Two real processes into one DEST: a generate run holds the lock (held inside, at
    its tasks); a second generate (the CLI), a convert, a mirror and a demo build into the
    same DEST are refused with its name; the first then finishes, and its store verifies."""
    dest, ready, go = tmp_path / "dest", tmp_path / "ready", tmp_path / "go"
    code = ("import sys, time, pathlib\n"
            "import nest_data, nest_data._generate as g\n"
            "ready, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])\n"
            "run = g._run\n"
            "def held(*args, **kwargs):\n"
            "    ready.touch()\n"
            "    deadline = time.monotonic() + 120\n"
            "    while not go.exists() and time.monotonic() < deadline:\n"
            "        time.sleep(0.02)\n"
            "    return run(*args, **kwargs)\n"
            "g._run = held\n"
            "nest_data.generate(sys.argv[3], sys.argv[4], imageset='mine', subject=1, "
            "roi='V1', location=sys.argv[5], chunk_images=2, show_progress=False)\n")
    first = subprocess.Popen([sys.executable, "-c", code, str(ready), str(go), str(images),
                              str(dest), str(fwrf_weights)], stderr=subprocess.PIPE)
    try:
        _wait_for(ready, first)
        named = f"generate (pid {first.pid} on {socket.gethostname()}, started "
        second = subprocess.run(
            [sys.executable, "-m", "nest_data._cli", "--no-progress", "generate", str(images),
             str(dest), "--imageset", "mine", "--subject", "1", "--roi", "V1", "--location",
             str(fwrf_weights), "--chunk-images", "2"], capture_output=True, text=True,
            timeout=WAIT_S)
        assert second.returncode == 2
        assert second.stderr.startswith(f"nest-data: error: another nest-data writer is "
                                        f"writing to {dest}: {named}")
        assert "Traceback" not in second.stderr
        for write in (lambda: convert_ned(ned_src, dest, workers=1, **V1),
                      lambda: nest_data.mirror(dest, location=str(collection), workers=1, **V1),
                      lambda: nest_data.build_demo(dest=str(dest))):
            with pytest.raises(WriterLockError) as refused:
                write()
            assert f"writing to {dest}: {named}" in str(refused.value)
        assert not _store(dest, **V1).exists()  # none of them wrote anything
        go.touch()
        _, err = first.communicate(timeout=WAIT_S)
    finally:
        first.kill()
    assert first.returncode == 0, err.decode()
    store = dest / "modality-fmri/train_dataset-nsd/model-fwrf/imageset-mine/sub-01_roi-V1.zarr"
    assert nest_data.open_store(store).sizes == {"image": 6, "voxel": 12}
    report = nest_data.verify(dest)
    assert report.ok and report.stores == 1
    assert cli(["verify", str(dest)]) == 0
    assert "1 store(s) checked" in capsys.readouterr().out


def test_a_built_demo_is_found_without_the_lock_and_a_build_waits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding the built demo needs no lock (it is found while another thread holds it); a
    build that must write waits for the holder, then refuses with its name."""
    from nest_data import _demo
    from nest_data._index import INDEX_FILE

    root = _demo.demo_root(tmp_path)
    root.mkdir(parents=True)
    (root / _demo._MARKER).write_text(json.dumps(_demo._stamp(_demo.DEMO_IMAGES)))
    (root / INDEX_FILE).write_text('{"format": "nest-data index", "version": "1.0", '
                                   '"stores": {}}')
    monkeypatch.setattr(_demo, "DEMO_BUILD_WAIT_S", 0.3)
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with writer_lock(root, "demo build"):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        held.wait(30)
        assert nest_data.build_demo(cache_dir=tmp_path, show_progress=False) == root
        with pytest.raises(WriterLockError) as refused:
            nest_data.build_demo(cache_dir=tmp_path, rebuild=True, show_progress=False)
        assert f"writing to {root}: demo build (pid {os.getpid()}" in str(refused.value)
    finally:
        release.set()
        thread.join(timeout=30)


# ------------------------------------------------------------------------------ foreign files


def test_overwrite_refuses_a_store_holding_user_files_and_keeps_them(
        ned_src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    convert_ned(ned_src, tmp_path, workers=1, **V1)
    store = _store(tmp_path, **V1)
    (store / "NOTES.txt").write_text("my notes")
    (store / "analysis").mkdir()
    (store / "analysis" / "fit.csv").write_text("a,b\n")
    (store / "responses" / "c" / "mine.npy").write_bytes(b"x")  # among the chunks
    (store / "scratch").mkdir()
    before = sorted(p.relative_to(store).as_posix() for p in store.rglob("*"))
    args = ["--no-progress", "convert", "ned", str(ned_src), str(tmp_path), "--workers", "1",
            "--overwrite", "--imageset", "things", "--subject", "1", "--roi", "V1"]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert (f"{store} is a folder nest-data wrote, but it also holds 4 file(s) or folder(s) "
            "nest-data did not write: NOTES.txt, analysis/fit.csv, responses/c/mine.npy, "
            "scratch/. nest-data replaces only what it wrote and never deletes anything else: "
            "move them out of that folder, then run this again.") in err
    assert "Traceback" not in err
    assert sorted(p.relative_to(store).as_posix() for p in store.rglob("*")) == before
    assert (store / "NOTES.txt").read_text() == "my notes"
    assert nest_data.verify(tmp_path).ok
    for name in ("NOTES.txt", "analysis", "responses/c/mine.npy", "scratch"):
        shutil.move(store / name, tmp_path / Path(name).name)
    assert cli(args) == 0  # only what nest-data wrote is left: replaced
    assert nest_data.verify(tmp_path).ok and _staged(tmp_path) == []


def test_weights_folder_with_a_user_file_is_not_replaced(tmp_path: Path) -> None:
    folder = tmp_path / "weights" / "sub-01"
    folder.mkdir(parents=True)
    (folder / "model.json").write_text('{"format": "nest-data fwrf weights 1"}')
    (folder / "weights.safetensors").write_bytes(b"...")
    check_replaceable(tmp_path, "weights/sub-01")  # only what nest-data writes there
    (folder / "README.md").write_text("where these came from")
    with pytest.raises(TargetExistsError, match=r"also holds 1 file\(s\) or folder\(s\) "
                                                "nest-data did not write: README.md"):
        check_replaceable(tmp_path, "weights/sub-01")


def test_remote_store_with_a_user_file_is_not_replaced() -> None:
    """The same check on a bucket (fsspec's memory file system stands for one)."""
    import uuid

    import fsspec

    root = f"memory://nest-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    base = root.removeprefix("memory://") + "/a.zarr"
    doc = {"zarr_format": 3, "node_type": "group", "consolidated_metadata": {
        "kind": "inline", "must_understand": False, "metadata": {"responses": {}}},
           "attributes": {"nest_data": {"objects": {"responses/c/0/0": "sha256:0"}}}}
    fs.pipe({f"{base}/zarr.json": json.dumps(doc).encode(),
             f"{base}/responses/zarr.json": b"{}", f"{base}/responses/c/0/0": b"x"})
    try:
        check_replaceable(root, "a.zarr")  # only what nest-data wrote
        fs.pipe_file(f"{base}/notes/today.md", b"mine")
        with pytest.raises(TargetExistsError, match=r"also holds 1 file\(s\) or folder\(s\) "
                                                    "nest-data did not write: notes/today.md"):
            check_replaceable(root, "a.zarr")
    finally:
        fs.rm(root.removeprefix("memory://"), recursive=True)


def test_convert_cleans_only_the_staging_nest_data_made(
        ned_src: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    staging = tmp_path / STAGING_DIR
    stale = staging / f"{'a' * 32}-sub-01_roi-V1.zarr"  # a stage of a killed conversion
    (stale / "responses").mkdir(parents=True)
    (stale / STAGE_MARKER).write_bytes(b"")
    moved = staging / f"{'b' * 32}-old-sub-01_roi-V1.zarr"  # a store commit moved aside
    moved.mkdir()
    (moved / "zarr.json").write_text("{}")
    job = staging / f"generate-{'c' * 16}-sub-01_roi-V1.zarr"  # resumable: kept
    job.mkdir()
    (staging / "NOTES.txt").write_text("mine")
    (staging / "analysis").mkdir()
    lookalike = staging / f"{'d' * 32}-thesis"  # named like a stage, but not one of ours
    lookalike.mkdir()
    (lookalike / "chapter1.tex").write_text("years of work")
    with caplog.at_level(logging.WARNING, logger="nest_data"):
        convert_ned(ned_src, tmp_path, workers=1, **V1)
    assert _staged(tmp_path) == sorted(["NOTES.txt", "analysis", lookalike.name, job.name])
    assert (staging / "NOTES.txt").read_text() == "mine"
    assert (lookalike / "chapter1.tex").read_text() == "years of work"
    warned = [r.getMessage() for r in caplog.records if "was not made by nest-data" in
              r.getMessage()]
    assert sorted(warned) == sorted(
        f"{staging / name} was not made by nest-data: it is left where it is; move it out "
        f"of {staging}, which holds the unfinished writes of nest-data"
        for name in ("NOTES.txt", "analysis", lookalike.name))
    assert nest_data.verify(tmp_path).ok


# ------------------------------------------------------------------------------ kill -9


def test_killed_mirror_resumed_from_a_moved_source_leaves_no_staging(
        collection: Path, tmp_path: Path) -> None:
    """kill -9 while two entries are fetched but not committed; the rerun copies from the
    same stores at another URL (the source moved), and no staging is left behind."""
    dest, ready = tmp_path / "dest", tmp_path / "ready"
    keys = {"subject": 1, "roi": "V1", "imageset": ["things", "nsd"]}
    code = ("import sys, time, pathlib\n"
            "import nest_data, nest_data._mirror as m\n"
            "calls = []\n"
            "def stop(*args, **kwargs):\n"  # the first entry is left uncommitted, then held
            "    calls.append(args)\n"
            "    if len(calls) == 2:\n"
            "        pathlib.Path(sys.argv[1]).touch()\n"
            "        time.sleep(120)\n"
            "m.commit = stop\n"
            "nest_data.mirror(sys.argv[2], location=sys.argv[3], workers=1, "
            f"show_progress=False, **{keys!r})\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(ready), str(dest),
                              str(collection)], stderr=subprocess.PIPE)
    try:
        _wait_for(ready, child)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        child.kill()
    assert len(_staged(dest)) == 2 and all(n.startswith("mirror-") for n in _staged(dest))
    assert not (dest / "modality-fmri").exists()  # nothing visible
    moved = tmp_path / "moved"
    shutil.copytree(collection, moved)
    report = nest_data.mirror(dest, location=str(moved), workers=1, show_progress=False,
                              **keys)
    assert report.copied == ["fmri/nsd/fwrf nsd sub-01 V1", "fmri/nsd/fwrf things sub-01 V1"]
    assert _staged(dest) == []
    assert nest_data.verify(dest).ok


# ------------------------------------------------------------------------------ full disk


def _mb(nbytes: int) -> int:
    return max(1, round(nbytes / 2**20))


def test_convert_on_a_full_disk(ned_src: Path, tmp_path: Path, full_disk: Callable[..., None],
                                monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    keys = ["--imageset", "things", "--subject", "1", "--roi", "V1", "FFA-1"]
    args = ["--no-progress", "convert", "ned", str(ned_src), str(tmp_path), "--workers", "1",
            *keys]
    sources = nest_data.converters.discover_ned(ned_src, imageset="things", subject=1,
                                                roi=["V1", "FFA-1"])
    full_disk(tmp_path, free=50_000)  # part of the first entry fits
    assert cli(args) == 2
    err = capsys.readouterr().err
    needs = _mb(sum(s.h5.stat().st_size for s in sources))
    assert (f"nest-data: error: no space left on {tmp_path} (needs about {needs} MB; 0 of 2 "
            "entries converted, 0 already complete); nothing half-written is visible there. "
            "Free some space (or write to another destination) and run the same command "
            "again: finished work is kept.") in err
    assert "Traceback" not in err and "re-download" not in err
    assert not (tmp_path / "modality-fmri").exists() and _staged(tmp_path) == []
    monkeypatch.undo()
    assert cli(args) == 0
    assert nest_data.verify(tmp_path).ok


def test_destination_on_a_full_disk_is_named_as_full(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A root that cannot even take an empty file is full, not unwritable."""
    from nest_data._staging import make_root

    def full(self: Path, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(NoSpaceError, match=f"^no space left on {tmp_path / 'new'}; nothing "
                                           "half-written is visible there"):
        make_root(tmp_path / "new")


def test_generate_on_a_full_disk(fwrf_weights: Path, images: Path, tmp_path: Path,
                                 full_disk: Callable[..., None],
                                 monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--no-progress", "generate", str(images), str(tmp_path), "--imageset", "mine",
            "--subject", "1", "--roi", "V1", "--location", str(fwrf_weights), "--chunk-images", "2"]
    full_disk(tmp_path, where="/responses/c/")  # the disk fills when chunks are written
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"nest-data: error: no space left on {tmp_path} (needs about 1 MB); "
                          "nothing half-written is visible there.")
    assert "Traceback" not in err
    assert not (tmp_path / "modality-fmri").exists()
    with pytest.raises(NoSpaceError) as raised:  # the API raises the same, an OSError
        nest_data.generate(images, tmp_path, imageset="mine", subject=1, roi="V1",
                           location=str(fwrf_weights), chunk_images=2)
    assert raised.value.errno == errno.ENOSPC and isinstance(raised.value, OSError)
    monkeypatch.undo()
    assert cli(args) == 0  # resumes
    assert nest_data.verify(tmp_path).ok and _staged(tmp_path) == []


def _fetches_running() -> list[asyncio.Task[Any]]:
    """The object fetches of ``mirror`` still running on zarr's event loop."""
    from zarr.core.sync import _get_loop

    return [t for t in asyncio.all_tasks(_get_loop())
            if "_fetch_all" in getattr(t.get_coro(), "__qualname__", "")]


def test_generate_drops_its_unfinished_job_made_with_other_arguments(
        fwrf_weights: Path, images: Path, tmp_path: Path, full_disk: Callable[..., None],
        monkeypatch: pytest.MonkeyPatch) -> None:
    kwargs: dict[str, Any] = {"imageset": "mine", "subject": 1, "roi": "V1",
                              "location": str(fwrf_weights), "show_progress": False}
    full_disk(tmp_path, where="/responses/c/")
    with pytest.raises(NoSpaceError):
        nest_data.generate(images, tmp_path, chunk_images=2, **kwargs)
    unfinished = _staged(tmp_path)
    assert len(unfinished) == 2 and all(n.startswith("generate-") for n in unfinished)
    monkeypatch.undo()
    nest_data.generate(images, tmp_path, chunk_images=3, **kwargs)  # another job, same store
    assert _staged(tmp_path) == []
    assert nest_data.verify(tmp_path).ok


def test_mirror_on_a_full_disk(collection: Path, tmp_path: Path,
                               full_disk: Callable[..., None], monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str],
                               caplog: pytest.LogCaptureFixture) -> None:
    """No traceback, no asyncio task left failing, no blame on the source."""
    args = ["--no-progress", "mirror", str(tmp_path), "--location", str(collection),
            "--subject", "1", "--roi", "V1", "--imageset", "things", "nsd", "--workers", "1"]
    index = read_index(collection)
    assert index is not None
    needs = _mb(sum(r.nbytes for p, r in index.stores.items()
                    if "sub-01_roi-V1" in p and ("imageset-things" in p or "imageset-nsd" in p)))
    full_disk(tmp_path, free=100_000)
    with caplog.at_level(logging.WARNING):
        assert cli(args) == 2
        assert not _fetches_running()  # no fetch left running, to fail unseen later
        gc.collect()  # a finished task whose error nobody retrieved would log now
    err = capsys.readouterr().err
    assert err.startswith(f"nest-data: error: no space left on {tmp_path} (needs about {needs} "
                          "MB; 0 of 2 entries copied, 0 already up to date); nothing "
                          "half-written is visible there.")
    assert "Traceback" not in err and "check the URL" not in err
    assert not [r for r in caplog.records if r.name == "asyncio"]
    assert not (tmp_path / "modality-fmri").exists()
    monkeypatch.undo()
    assert cli(args) == 0  # resumes
    assert nest_data.verify(tmp_path).ok and _staged(tmp_path) == []


@pytest.fixture(autouse=True)
def _no_lock_left(tmp_path: Path) -> Iterator[None]:
    """Every writer releases its lock: a test ends with none held."""
    yield
    lock = tmp_path / WRITER_LOCK_FILE
    if lock.exists():
        with writer_lock(tmp_path, "check"):
            pass


# --------------------------------------------------------------------------------------
# Outputs: `encode --out` and the demo's arguments.
# --------------------------------------------------------------------------------------

N_VOXELS = 12  # the fwrf_weights fixture's
#: ``run(*extra, images=2, location=None)``: ``nest-data encode`` on the test images and
#: weights with ``extra`` arguments; returns the exit status and what went to stderr.
EncodeCLI = Callable[..., tuple[int, str]]


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    files = []
    for k, pixels in enumerate(test_images(3, 64, seed=5)):
        files.append(str(folder / f"im{k}.png"))
        Image.fromarray(pixels).save(files[-1])
    return files


@pytest.fixture
def encode_cli(fwrf_weights: Path, image_files: list[str], capsys: pytest.CaptureFixture[str]
               ) -> EncodeCLI:
    """See :data:`EncodeCLI`."""

    def run(*extra: str, images: int = 2, location: str | None = None) -> tuple[int, str]:
        capsys.readouterr()
        status = cli(["--no-progress", "encode", *image_files[:images], "--subject", "1",
                       "--roi", "V1", "--location", location or str(fwrf_weights), *extra])
        return status, capsys.readouterr().err

    return run


def _expected(fwrf_weights: Path, image_files: list[str], images: int = 2) -> xr.DataArray:
    return nest_data.encode(image_files[:images], subject=1, roi="V1",
                            location=str(fwrf_weights))


def _responses(out: Path) -> np.ndarray:
    kwargs = {"engine": "zarr"} if out.suffix == ".zarr" else {}
    with xr.open_dataset(out, **kwargs) as ds:
        return np.asarray(ds.responses.values)


def _no_leftovers(folder: Path, *expected: str) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(expected)


# ------------------------------------------------------------------------------------------
# Where the output goes
# ------------------------------------------------------------------------------------------


def test_missing_parent_folders_are_created(encode_cli: EncodeCLI, fwrf_weights: Path,
                                            image_files: list[str], tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper" / "r.nc"
    status, err = encode_cli("--out", str(out))
    assert (status, err) == (0, "")
    np.testing.assert_array_equal(_responses(out), _expected(fwrf_weights, image_files).values)
    _no_leftovers(out.parent, "r.nc")


def test_a_killed_writers_temporary_output_goes_with_the_next_write(
        encode_cli: EncodeCLI, fwrf_weights: Path, image_files: list[str], tmp_path: Path) -> None:
    """kill -9 leaves the hidden temporary output; the next write of that output on this host
    removes it, and keeps those of running processes and of other hosts."""
    from nest_data._output import _HOST

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True, timeout=60)
    gone = int(ended.stdout)
    temps = {name: tmp_path / f".r.zarr.{name}-{hexa * 12}.nest-data-tmp" for name, hexa in (
        (f"{_HOST}-{gone}", "0"), (f"{_HOST}-{os.getpid()}", "1"), (f"elsewhere-{gone}", "2"))}
    for temp in temps.values():
        temp.mkdir()
        (temp / "zarr.json").write_text("{}")
    out = tmp_path / "r.zarr"
    status, err = encode_cli("--out", str(out))
    assert (status, err) == (0, "")
    np.testing.assert_array_equal(_responses(out), _expected(fwrf_weights, image_files).values)
    _no_leftovers(tmp_path, "r.zarr", *(temps[name].name for name in temps
                                        if name != f"{_HOST}-{gone}"))


@pytest.mark.parametrize("name", ["r.nc", "r.zarr"])
def test_unwritable_places_are_refused_before_encoding(
        encode_cli: EncodeCLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    import nest_data._encode

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("encoded although the output cannot be written")

    monkeypatch.setattr(nest_data._encode, "encode", never)
    (tmp_path / "file.txt").write_text("mine")
    for out, message in (
            (f"/proc/{name}", "cannot write in the destination /proc ("),
            (str(tmp_path / "file.txt" / name),
             f"the destination {tmp_path / 'file.txt'} is a file, not a folder; give a folder")):
        status, err = encode_cli("--out", out)
        assert status == 2 and message in err and "Traceback" not in err, err
    assert (tmp_path / "file.txt").read_text() == "mine"
    status, err = encode_cli("--out", str(tmp_path / "r.txt"))
    assert status == 2
    assert "give a file ending in .nc (NetCDF) or a folder ending in .zarr" in err
    status, err = encode_cli("--overwrite")
    assert status == 2
    assert "--overwrite replaces what is at --out, and no --out was given" in err


# ------------------------------------------------------------------------------------------
# What may be replaced
# ------------------------------------------------------------------------------------------


def test_a_user_file_is_kept_unless_overwrite(encode_cli: EncodeCLI, fwrf_weights: Path,
                                              image_files: list[str], tmp_path: Path) -> None:
    out = tmp_path / "x.nc"
    out.write_text("my notes")
    status, err = encode_cli("--out", str(out))
    assert status == 2 and "Traceback" not in err
    assert (f"{out} exists and is a file that nest-data did not write; give --overwrite "
            "to replace it, or choose another output") in err  # the command's words only
    assert out.read_text() == "my notes"
    _no_leftovers(tmp_path, "x.nc")
    status, err = encode_cli("--out", str(out), "--overwrite")
    assert (status, err) == (0, "")
    np.testing.assert_array_equal(_responses(out), _expected(fwrf_weights, image_files).values)
    _no_leftovers(tmp_path, "x.nc")


def test_a_foreign_zarr_store_is_kept_unless_overwrite(
        encode_cli: EncodeCLI, fwrf_weights: Path, image_files: list[str], tmp_path: Path) -> None:
    import zarr

    out = tmp_path / "theirs.zarr"
    zarr.open_group(out, mode="w", zarr_format=3).create_array("mine", shape=(3,), dtype="i4")
    status, err = encode_cli("--out", str(out))
    assert status == 2 and "Traceback" not in err
    assert f"{out} exists and is a Zarr store that nest-data did not write; give --overwrite" in err
    assert "mine" in zarr.open_group(out, mode="r")
    status, err = encode_cli("--out", str(out), "--overwrite")
    assert (status, err) == (0, "")
    assert "mine" not in zarr.open_group(out, mode="r")
    np.testing.assert_array_equal(_responses(out), _expected(fwrf_weights, image_files).values)
    _no_leftovers(tmp_path, "theirs.zarr")


def test_a_folder_that_is_not_zarr_is_never_replaced(encode_cli: EncodeCLI, tmp_path: Path) -> None:
    folder = tmp_path / "notes.zarr"
    folder.mkdir()
    (folder / "NOTES.txt").write_text("mine")
    (tmp_path / "dir.nc").mkdir()
    for out, what in ((folder, "is a folder that is not a Zarr store; nest-data never "
                               "deletes a folder of yours, even with --overwrite"),
                      (tmp_path / "dir.nc", "is a folder; a .nc output is a file")):
        for extra in ((), ("--overwrite",)):
            status, err = encode_cli("--out", str(out), *extra)
            assert status == 2 and f"{out} exists and {what}" in err
    assert (folder / "NOTES.txt").read_text() == "mine"
    _no_leftovers(folder, "NOTES.txt")


@pytest.mark.parametrize("name", ["r.nc", "r.zarr"])
def test_an_output_nest_data_wrote_is_replaced(encode_cli: EncodeCLI, fwrf_weights: Path,
                                               image_files: list[str], tmp_path: Path,
                                               name: str) -> None:
    """As ``generate`` replaces its own store: running the command again refreshes it."""
    out = tmp_path / name
    assert encode_cli("--out", str(out), images=2) == (0, "")
    assert encode_cli("--out", str(out), images=3) == (0, "")
    np.testing.assert_array_equal(_responses(out),
                                  _expected(fwrf_weights, image_files, 3).values)
    kwargs = {"engine": "zarr"} if out.suffix == ".zarr" else {}
    with xr.open_dataset(out, **kwargs) as ds:
        assert ds.attrs[WRITER_ATTR].startswith("nest-data ")
    _no_leftovers(tmp_path, name)


# ------------------------------------------------------------------------------------------
# A full disk
# ------------------------------------------------------------------------------------------


def _disk_full_after(monkeypatch: pytest.MonkeyPatch, n_files: int) -> None:
    """``os.fsync`` succeeds ``n_files`` times, then fails as a full disk does."""
    real = os.fsync
    calls = []

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) > n_files:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize(("name", "written"), [("r.nc", 0), ("r.zarr", 2)])
def test_a_full_disk_is_named_and_leaves_nothing(encode_cli: EncodeCLI, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 name: str, written: int) -> None:
    out = tmp_path / "out" / name
    _disk_full_after(monkeypatch, written)  # Zarr: some files written, then the disk fills
    status, err = encode_cli("--out", str(out))
    assert status == 2 and "Traceback" not in err
    assert f"no space left on {out} (needs about 1 MB)" in err and "Free some space" in err
    _no_leftovers(out.parent)


@pytest.mark.parametrize("name", ["r.nc", "r.zarr"])
def test_a_full_disk_keeps_the_older_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            name: str) -> None:
    old = xr.DataArray(np.arange(6, dtype="f4").reshape(2, 3), dims=("image", "voxel"),
                       name="responses")
    out = write_output(old, tmp_path / name)
    bits = np.random.default_rng(0).integers(0, 2**32, (1000, 1000), dtype=np.uint32)
    values = bits.view(np.float32)  # random bits: 4 MB that no codec compresses
    new = xr.DataArray(values, dims=("image", "voxel"), name="responses")
    _disk_full_after(monkeypatch, 0)
    with pytest.raises(nest_data.NoSpaceError, match=r"no space left on .* \(needs about 4 MB\)"
                       ) as caught:
        write_output(new, out)
    assert isinstance(caught.value, OSError) and caught.value.errno == errno.ENOSPC
    np.testing.assert_array_equal(_responses(out), old.values)
    _no_leftovers(tmp_path, name)


# ------------------------------------------------------------------------------------------
# Where the weights are
# ------------------------------------------------------------------------------------------


def test_an_unreachable_location_is_not_a_missing_file(encode_cli: EncodeCLI, tmp_path: Path
                                                       ) -> None:
    status, err = encode_cli("--out", str(tmp_path / "r.nc"), location="http://127.0.0.1:1/x")
    assert status == 2 and "Traceback" not in err
    assert "model.json is missing" not in err
    assert "from http://127.0.0.1:1/x/weights/" in err
    assert "the server is unreachable or overloaded" in err
    assert "check the URL and your network" in err
    _no_leftovers(tmp_path)


def test_weights_over_http_and_a_missing_model_json(fwrf_weights: Path, image_files: list[str]
                                                    ) -> None:
    with HTTPServer() as server:
        server.upload(fwrf_weights)
        remote = nest_data.encode(image_files[:2], subject=1, roi="V1", location=server.url,
                                  cache=False)
        np.testing.assert_array_equal(remote.values,
                                      _expected(fwrf_weights, image_files).values)
        with pytest.raises(nest_data.StoreNotFoundError,
                           match=r"no converted weights at .*/no-such-root/weights/.* "
                                 r"\(model.json is missing\)"):
            nest_data.encode(image_files[:1], subject=1, roi="V1", location=server.missing_url)


# ------------------------------------------------------------------------------------------
# The demo's arguments
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n_images": 0}, "n_images=0: the demo builds 1 to 1000 images per image set; give a "
                      "whole number in that range (default 24)"),
    ({"n_images": 1001}, "n_images=1001: the demo builds 1 to 1000 images"),
    ({"n_images": 2.5}, "n_images=2.5: the demo builds 1 to 1000 images"),
    ({"n_images": True}, "n_images=True: the demo builds 1 to 1000 images"),
    ({"workers": 0}, "workers=0: give a positive number of conversion processes"),
    ({"storage_options": {"anon": True}}, "storage_options were given for the local dest"),
])
def test_build_demo_refuses_bad_arguments_before_writing(
        tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    dest = tmp_path / "demo"
    with pytest.raises(nest_data.InputError, match=re.escape(message)):
        nest_data.build_demo(dest=str(dest), show_progress=False, **kwargs)
    _no_leftovers(tmp_path)


def test_build_demo_refuses_a_file_as_dest(tmp_path: Path) -> None:
    dest = tmp_path / "demo"
    dest.write_text("mine")
    with pytest.raises(nest_data.TargetExistsError, match=f"the destination {dest} is a file, "
                                                          "not a folder"):
        nest_data.build_demo(dest=str(dest), n_images=1, show_progress=False)
    assert dest.read_text() == "mine"
    _no_leftovers(tmp_path, "demo")


def test_demo_command_refuses_bad_arguments_before_writing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NEST_DATA_CACHE_DIR", str(tmp_path / "cache"))
    dest = tmp_path / "D"
    for argv in (["demo", "--n-images", "0", "--dest", str(dest)],
                 ["demo", "--rebuild", "--n-images", "-3"]):
        assert cli(argv) == 2
        err = capsys.readouterr().err
        assert "the demo builds 1 to 1000 images per image set" in err
        assert "images folder" not in err and "Traceback" not in err
    _no_leftovers(tmp_path)
