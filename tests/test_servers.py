"""The loopback storage servers of ``tests/servers.py``, checked with plain fsspec."""

from __future__ import annotations

import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import fsspec
import pytest

from .servers import GCSServer, HTTPServer, Request, S3Server, Served

A = bytes(range(256)) * 40  # 10240 bytes
B = b"nested file\n"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small folder: two top-level files and a nested one."""
    root = tmp_path_factory.mktemp("tree")
    (root / "a.bin").write_bytes(A)
    (root / "c.txt").write_bytes(b"c")
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "sub" / "deeper" / "b.txt").write_bytes(B)
    return root


@pytest.fixture(scope="module", params=[S3Server, GCSServer, HTTPServer],
                ids=["s3", "gcs", "http"])
def _module_server(request: pytest.FixtureRequest, tree: Path) -> Iterator[Served]:
    with request.param() as srv:
        srv.upload(tree)
        srv.upload(tree, prefix="copy")
        yield srv


@pytest.fixture
def server(_module_server: Served, tree: Path) -> Served:
    """A running server holding ``tree`` at its root and under ``copy/``; requests cleared."""
    _module_server.upload(tree)  # undo any tampering
    _module_server.reset()
    return _module_server


def _fs(srv: Served, **kwargs: Any) -> fsspec.AbstractFileSystem:
    protocol = srv.url.split("://", 1)[0]
    return fsspec.filesystem(protocol, skip_instance_cache=True, **srv.storage_options,
                             **kwargs)


def _gets(srv: Served, key: str) -> list[Request]:
    return [r for r in srv.requests if r.method == "GET" and r.path.endswith(f"/root/{key}")]


def _http_fs(timeout: float = 10.0) -> fsspec.AbstractFileSystem:
    return fsspec.filesystem("http", skip_instance_cache=True,
                             client_kwargs={"timeout": aiohttp.ClientTimeout(total=timeout)})


def test_read_back(server: Served) -> None:
    fs = _fs(server)
    assert server.requests == []  # upload traffic is not recorded
    assert fs.cat_file(server.url + "/a.bin") == A
    (get,) = _gets(server, "a.bin")
    assert get.status == 200 and get.bytes_sent == len(A) and get.range is None
    assert fs.cat_file(server.url + "/sub/deeper/b.txt") == B
    assert fs.cat_file(server.url + "/copy/sub/deeper/b.txt") == B

    server.reset()
    assert server.requests == []
    assert fs.cat_file(server.url + "/a.bin", start=10, end=20) == A[10:20]
    (get,) = _gets(server, "a.bin")
    assert get.status == 206 and get.bytes_sent == 10 and get.range == "bytes=10-19"


def test_tamper(server: Served) -> None:
    fs = _fs(server)
    assert fs.cat_file(server.url + "/c.txt") == b"c"
    server.tamper("c.txt", b"tampered")
    assert fs.cat_file(server.url + "/c.txt") == b"tampered"
    server.tamper("/sub/deeper/b.txt", b"x" * 3)
    assert fs.cat_file(server.url + "/sub/deeper/b.txt") == b"xxx"
    assert [r.bytes_sent for r in _gets(server, "c.txt")] == [1, 8]


def test_missing(server: Served) -> None:
    fs = _fs(server)
    with pytest.raises(FileNotFoundError):
        fs.cat_file(server.url + "/nope.bin")
    with pytest.raises(FileNotFoundError):
        fs.cat_file(server.missing_url + "/a.bin")
    # s3fs follows a 404 HEAD with a listing (200 when the bucket exists)
    assert any(r.status == 404 for r in server.requests)
    assert not any(r.status in (200, 206) and r.path.endswith(".bin") for r in server.requests)


def test_s3_missing_bucket_alias() -> None:
    assert S3Server.anon_url_for_missing_bucket() == "s3://no-such-bucket/root"


def test_gcs_env_restored() -> None:
    before = {k: os.environ.get(k) for k in GCSServer.ENV}
    with GCSServer() as srv:
        assert os.environ["STORAGE_EMULATOR_HOST"] == srv.endpoint
        assert os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] == "false"
    assert {k: os.environ.get(k) for k in GCSServer.ENV} == before


def _refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("cls", [S3Server, GCSServer, HTTPServer], ids=["s3", "gcs", "http"])
def test_stopped_on_exit(cls: type[Served]) -> None:
    with cls() as srv:
        port = srv.port
        assert srv.endpoint == f"http://127.0.0.1:{port}"
        assert not _refused(port)
    assert _refused(port)


# --- HTTP only: range semantics and fault knobs ---------------------------------------------


@pytest.fixture
def http(tree: Path) -> Iterator[HTTPServer]:
    """A fresh HTTP server holding ``tree``."""
    with HTTPServer() as srv:
        srv.upload(tree)
        yield srv


def _raw(url: str, method: str = "GET", rng: str | None = None) -> tuple[int, dict[str, str],
                                                                          bytes]:
    headers = {"Range": rng} if rng else {}
    req = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_http_ranges(http: HTTPServer) -> None:
    url = http.url + "/a.bin"
    n = len(A)
    status, headers, body = _raw(url, rng="bytes=100-")
    assert (status, body, headers["Content-Range"]) == (206, A[100:], f"bytes 100-{n - 1}/{n}")
    status, headers, body = _raw(url, rng="bytes=-5")
    assert (status, body, headers["Content-Range"]) == (206, A[-5:], f"bytes {n - 5}-{n - 1}/{n}")
    status, headers, body = _raw(url, rng=f"bytes={n - 2}-{n + 50}")
    assert (status, body) == (206, A[-2:])
    status, headers, body = _raw(url, rng=f"bytes={n}-")
    assert (status, body, headers["Content-Range"]) == (416, b"", f"bytes */{n}")
    status, headers, body = _raw(url, method="HEAD")
    assert (status, body, headers["Content-Length"]) == (200, b"", str(n))
    assert _raw(http.url + "/sub")[0] == 404  # no directory listing
    assert _raw(http.url + "/../../etc/passwd")[0] == 404
    assert [(r.method, r.status, r.bytes_sent) for r in http.requests] == [
        ("GET", 206, n - 100), ("GET", 206, 5), ("GET", 206, 2), ("GET", 416, 0),
        ("HEAD", 200, 0), ("GET", 404, 0), ("GET", 404, 0)]


def test_http_fail_first_and_every(http: HTTPServer) -> None:
    fs = _http_fs()
    url = http.url + "/c.txt"
    http.fail_first = 2
    for _ in range(2):
        with pytest.raises(aiohttp.ClientResponseError) as err:
            fs.cat_file(url)
        assert err.value.status == 503
    assert fs.cat_file(url) == b"c"
    assert [r.status for r in http.requests] == [503, 503, 200]

    http.fail_first = 0
    http.fail_every = 3
    http.reset()
    results = []
    for _ in range(6):
        try:
            results.append(fs.cat_file(url))
        except aiohttp.ClientResponseError as e:
            results.append(e.status)
    assert results == [b"c", b"c", 503, b"c", b"c", 503]
    assert [r.status for r in http.requests] == [200, 200, 503, 200, 200, 503]
    assert all(r.bytes_sent == 0 for r in http.requests if r.status == 503)


def test_http_ignore_range(http: HTTPServer) -> None:
    fs = _http_fs()
    http.ignore_range = True
    assert fs.cat_file(http.url + "/a.bin", start=10, end=20) == A  # whole file, as served
    (get,) = _gets(http, "a.bin")
    assert (get.status, get.bytes_sent, get.range) == (200, len(A), "bytes=10-19")


def test_http_latency(http: HTTPServer) -> None:
    fs = _http_fs()
    http.latency = 0.3
    t0 = time.monotonic()
    assert fs.cat_file(http.url + "/c.txt") == b"c"
    assert time.monotonic() - t0 >= 0.25


def test_http_hang(http: HTTPServer) -> None:
    fs = _http_fs(timeout=0.5)
    http.hang_every = 2
    assert fs.cat_file(http.url + "/c.txt") == b"c"
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        fs.cat_file(http.url + "/c.txt")
    assert time.monotonic() - t0 < 3  # the client gave up; the server is still sleeping
    assert fs.cat_file(http.url + "/c.txt") == b"c"  # request 3: answered at once
    # the hung request (still sleeping) is not recorded yet, and exit does not wait for it
    assert [r.status for r in http.requests] == [200, 200]
