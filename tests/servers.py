"""Loopback storage servers for remote-storage tests: S3 (moto), GCS (emulator) and plain HTTP.

Each server is a context manager that listens on a free port of 127.0.0.1, exposes an fsspec
``url`` plus ``storage_options`` and records every request a client makes in ``requests``.
Traffic the helpers make themselves (``upload``, ``tamper``, setup) is not recorded.

Note: moto keeps its state in process-wide globals, so run one ``S3Server`` at a time; it is
reset when a server starts and when it stops.  On any ``S3Server`` the URL
``s3://no-such-bucket/root`` (``S3Server.missing_url``) gives ``NoSuchBucket``
(``FileNotFoundError`` in s3fs).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote, unquote, urlsplit
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

HOST = "127.0.0.1"
BUCKET = "nest"
ROOT = "root"
# Marks requests made by the helpers themselves, so that they are not recorded.
INTERNAL_AGENT = "nest-test-servers-internal"
# How long reading ``requests`` waits for responses still being sent (seconds).
SETTLE_S = 2.0
# Idle or stuck connections are dropped after this many seconds.
SOCKET_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Request:
    """One request as the server saw it."""

    method: str
    path: str  # percent-decoded path, without the query string
    status: int  # 0 if the server failed before sending a status line
    bytes_sent: int  # response body bytes actually written to the socket
    range: str | None  # the Range header, if any
    query: str = ""  # raw query string
    authorization: str | None = None  # the Authorization header, if any


class _Recorder:
    """Thread-safe request log that also knows which responses are still being sent."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._log: list[tuple[int, Request]] = []
        self._busy = 0
        self._seq = 0
        self._floor = 0  # requests that arrived before the last clear() are not logged

    def arrived(self) -> int:
        """A request arrived: its sequence number (``requests`` is sorted by it)."""
        with self._cond:
            self._seq += 1
            return self._seq

    def begin(self) -> None:
        """A response is about to be sent."""
        with self._cond:
            self._busy += 1

    def end(self, seq: int, request: Request | None, began: bool = True) -> None:
        """A request is done; log it (unless None)."""
        with self._cond:
            if began:
                self._busy -= 1
            if request is not None and seq > self._floor:
                self._log.append((seq, request))
            self._cond.notify_all()

    def snapshot(self, settle: float = SETTLE_S) -> list[Request]:
        """Copy of the log, after waiting (bounded) for responses being sent to finish."""
        with self._cond:
            self._cond.wait_for(lambda: self._busy <= 0, timeout=settle)
            return [r for _, r in sorted(self._log, key=lambda item: item[0])]

    def clear(self, settle: float = SETTLE_S) -> None:
        """Forget every request so far, after waiting (bounded) for responses being sent."""
        with self._cond:
            self._cond.wait_for(lambda: self._busy <= 0, timeout=settle)
            self._log.clear()
            self._floor = self._seq


def _split_target(target: str) -> tuple[str, str]:
    """Request target -> (percent-decoded path, raw query)."""
    parts = urlsplit(target)
    return unquote(parts.path), parts.query


def _join(*parts: str) -> str:
    """Join key parts with '/', ignoring empty parts and stray slashes."""
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


class Served:
    """Common interface: a started server plus what fsspec needs to reach it."""

    url: str
    storage_options: dict[str, Any]
    missing_url: str  # a URL on this server whose bucket/root does not exist
    port: int

    def __init__(self) -> None:
        self._recorder = _Recorder()
        self.port = 0

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{HOST}:{self.port}"

    @property
    def requests(self) -> list[Request]:
        """Every request received since start/reset, in arrival order (a copy)."""
        return self._recorder.snapshot()

    def reset(self) -> None:
        """Clear ``requests``; requests still being answered (e.g. hung ones) are dropped too."""
        self._recorder.clear()

    def upload(self, local_dir: Path, prefix: str = "") -> None:
        """Copy ``local_dir/<rel>`` to ``url/<prefix>/<rel>``."""
        local_dir = Path(local_dir)
        for path in sorted(local_dir.rglob("*")):
            if path.is_file():
                self._put(_join(prefix, path.relative_to(local_dir).as_posix()),
                          path.read_bytes())

    def tamper(self, key: str, data: bytes) -> None:
        """Overwrite one object (``key`` relative to ``url``)."""
        self._put(_join(key), data)

    def remove(self, key: str) -> None:
        """Delete one object (``key`` relative to ``url``); ``tamper`` puts it back."""
        self._delete(_join(key))

    def _delete(self, key: str) -> None:
        raise NotImplementedError

    def start(self) -> None:
        """Start serving."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop serving and release the port."""
        raise NotImplementedError

    def _put(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# S3 (moto)


class _CountingBody:
    """WSGI response iterable that counts body bytes and logs the request on close()."""

    def __init__(self, inner: Iterable[bytes], done: Any, head: bool) -> None:
        self._inner = inner
        self._done = done
        self._head = head
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            if not self._head:  # the server never writes a body for HEAD
                self.sent += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self._inner, "close", None)
            if close is not None:
                close()
        finally:
            self._done(self.sent)


class _RecordingWSGI:
    """WSGI middleware that logs method, path, status, body bytes and Range of each request."""

    def __init__(self, app: WSGIApplication, recorder: _Recorder) -> None:
        self.app = app
        self.recorder = recorder

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        if INTERNAL_AGENT in environ.get("HTTP_USER_AGENT", ""):
            return self.app(environ, start_response)
        method = environ.get("REQUEST_METHOD", "")
        path, query = _split_target(environ.get("RAW_URI") or environ.get("PATH_INFO", ""))
        rng = environ.get("HTTP_RANGE")
        status = [0]
        seq = self.recorder.arrived()

        def recording_start(status_line: str, headers: list[tuple[str, str]],
                            exc_info: Any = None) -> Any:
            status[0] = int(status_line.split(None, 1)[0])
            return start_response(status_line, headers, exc_info)

        def done(sent: int) -> None:
            self.recorder.end(seq, Request(method, path, status[0], sent, rng, query))

        self.recorder.begin()
        try:
            inner = self.app(environ, recording_start)
        except BaseException:
            self.recorder.end(seq, Request(method, path, status[0] or 500, 0, rng, query))
            raise
        return _CountingBody(inner, done, head=method == "HEAD")


class S3Server(Served):
    """moto's ThreadedMotoServer with bucket ``nest``; ``url = "s3://nest/root"``."""

    def __init__(self) -> None:
        super().__init__()
        self.url = f"s3://{BUCKET}/{ROOT}"
        self.missing_url = f"s3://no-such-bucket/{ROOT}"
        self.storage_options = {}
        self._moto: Any = None
        self._client: Any = None

    @staticmethod
    def anon_url_for_missing_bucket() -> str:
        """A URL whose bucket does not exist (reads give NoSuchBucket / FileNotFoundError)."""
        return f"s3://no-such-bucket/{ROOT}"

    def start(self) -> None:
        """Start moto on a free port, reset its state and create the bucket."""
        import boto3
        from botocore.config import Config
        from moto.moto_server.threaded_moto_server import ThreadedMotoServer
        from moto.moto_server.werkzeug_app import MotoRequestHandler

        class QuietHandler(MotoRequestHandler):
            timeout = SOCKET_TIMEOUT_S

            def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
                pass

            def log(self, type: str, message: str, *args: Any) -> None:
                pass

        self._moto = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
        self._moto.start()
        # ThreadedMotoServer offers no hook: wrap its WSGI app and handler once it is bound.
        wsgi = self._moto._server
        wsgi.app = _RecordingWSGI(wsgi.app, self._recorder)
        wsgi.RequestHandlerClass = QuietHandler
        self.port = self._moto.get_host_and_port()[1]
        self.storage_options = {
            "endpoint_url": self.endpoint, "key": "testing", "secret": "testing",
            "client_kwargs": {"region_name": "us-east-1"},
        }
        try:
            self._moto_reset()
            self._client = boto3.client(
                "s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                aws_secret_access_key="testing", region_name="us-east-1",
                config=Config(user_agent_extra=INTERNAL_AGENT, connect_timeout=5,
                              read_timeout=10, retries={"max_attempts": 1}))
            self._client.create_bucket(Bucket=BUCKET)
        except BaseException:
            self.stop()
            raise

    def make_public(self) -> None:
        """Let anonymous (unsigned) requests list and read the bucket, as AWS Open Data does."""
        policy = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"],
            "Resource": [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"]}]}
        self._client.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps(policy))

    def _moto_reset(self) -> None:
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST",
                                     headers={"User-Agent": INTERNAL_AGENT})
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()

    def stop(self) -> None:
        """Reset moto's state and stop the server."""
        if self._moto is None:
            return
        try:
            self._moto_reset()
        except OSError:
            pass
        if self._client is not None:
            self._client.close()
            self._client = None
        self._moto.stop()
        self._moto = None

    def _put(self, key: str, data: bytes) -> None:
        self._client.put_object(Bucket=BUCKET, Key=_join(ROOT, key), Body=data)

    def _delete(self, key: str) -> None:
        self._client.delete_object(Bucket=BUCKET, Key=_join(ROOT, key))


# --------------------------------------------------------------------------------------------
# GCS (gcp-storage-emulator)


class GCSServer(Served):
    """gcp-storage-emulator (in memory, bucket ``nest``); ``url = "gs://nest/root"``.

    While running it sets ``STORAGE_EMULATOR_HOST`` and ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``
    (restored on exit); ``storage_options`` also carries ``endpoint_url`` so that a gcsfs instance
    does not depend on the environment.
    """

    ENV = ("STORAGE_EMULATOR_HOST", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")

    def __init__(self) -> None:
        super().__init__()
        self.url = f"gs://{BUCKET}/{ROOT}"
        self.missing_url = f"gs://no-such-bucket/{ROOT}"
        self.storage_options = {}
        self._server: Any = None
        self._saved_env: dict[str, str | None] = {}
        self._saved_registry: dict[str, type | None] = {}

    def start(self) -> None:
        """Start the emulator on a free port and record its requests."""
        from gcp_storage_emulator.server import RequestHandler, create_server

        recorder = self._recorder

        class RecordingHandler(RequestHandler):  # type: ignore[misc]
            timeout = SOCKET_TIMEOUT_S
            _sent = 0
            _body_from = -1
            _status = 0
            _began = False
            _seq = 0

            def setup(self) -> None:
                super().setup()
                raw = self.wfile
                handler = self

                class Counting:
                    def write(self, data: bytes) -> int:
                        n = raw.write(data)
                        handler._sent += len(data) if n is None else n
                        return n

                    def flush(self) -> None:
                        raw.flush()

                    def close(self) -> None:
                        raw.close()

                    @property
                    def closed(self) -> bool:
                        return bool(raw.closed)

                self.wfile = Counting()  # type: ignore[assignment]

            def send_response(self, code: int, message: str | None = None) -> None:
                if not self._began:
                    self._began = True
                    recorder.begin()
                self._status = code
                super().send_response(code, message)

            def parse_request(self) -> bool:
                self._seq = recorder.arrived()
                return bool(super().parse_request())

            def end_headers(self) -> None:
                super().end_headers()
                self._body_from = self._sent

            def handle_one_request(self) -> None:
                self._sent, self._body_from, self._status, self._began = 0, -1, 0, False
                self._seq = 0
                self.command = ""
                record: Request | None = None
                try:
                    super().handle_one_request()
                finally:
                    headers = getattr(self, "headers", None)
                    if self.command and headers is not None:
                        path, query = _split_target(self.path)
                        body = 0 if self._body_from < 0 else self._sent - self._body_from
                        if self.command == "HEAD":
                            body = 0
                        record = Request(self.command, path, self._status, body,
                                         headers.get("Range"), query)
                        if INTERNAL_AGENT in (headers.get("User-Agent") or ""):
                            record = None
                    if self._began or record is not None:
                        recorder.end(self._seq or recorder.arrived(), record, began=self._began)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = create_server(HOST, 0, in_memory=True, default_bucket=BUCKET)
        self._server.start()
        httpd = self._server._api._httpd  # no hook: swap the handler once it is bound
        httpd.RequestHandlerClass = partial(RecordingHandler, self._server._storage)
        httpd.handle_error = lambda request, client_address: None
        self.port = int(httpd.server_address[1])
        self._saved_env = {k: os.environ.get(k) for k in self.ENV}
        os.environ["STORAGE_EMULATOR_HOST"] = self.endpoint
        os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
        self.storage_options = {"token": "anon", "endpoint_url": self.endpoint}
        self._plain_gcsfs()

    def _plain_gcsfs(self) -> None:
        """If gcsfs was imported with its experimental class, map gs:// to the plain one.

        The experimental class probes each bucket over gRPC (about 60 s against the emulator);
        the environment variable only matters when gcsfs is first imported.
        """
        gcsfs = sys.modules.get("gcsfs")
        if gcsfs is None or gcsfs.GCSFileSystem is gcsfs.core.GCSFileSystem:
            return
        import fsspec

        for proto in ("gs", "gcs"):
            self._saved_registry[proto] = fsspec.registry.get(proto)
            fsspec.register_implementation(proto, gcsfs.core.GCSFileSystem, clobber=True)

    def _restore_registry(self) -> None:
        import fsspec

        for proto, cls in self._saved_registry.items():
            if cls is None:
                importlib.import_module("fsspec.registry")._registry.pop(proto, None)
            else:
                fsspec.register_implementation(proto, cls, clobber=True)
        self._saved_registry = {}

    def stop(self) -> None:
        """Stop the emulator and restore the environment."""
        if self._server is None:
            return
        self._server.stop()
        self._server = None
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._saved_env = {}
        self._restore_registry()

    def _put(self, key: str, data: bytes) -> None:
        name = quote(_join(ROOT, key), safe="")
        req = urllib.request.Request(
            f"{self.endpoint}/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name={name}",
            data=data, method="POST",
            headers={"User-Agent": INTERNAL_AGENT, "Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()

    def _delete(self, key: str) -> None:
        name = quote(_join(ROOT, key), safe="")
        req = urllib.request.Request(f"{self.endpoint}/storage/v1/b/{BUCKET}/o/{name}",
                                     method="DELETE", headers={"User-Agent": INTERNAL_AGENT})
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()


# --------------------------------------------------------------------------------------------
# Plain HTTP with fault injection


class _QuietThreadingHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    # A real server accepts many connections at once; socketserver's default backlog of 5
    # drops the rest of a burst, which the client retries a second later (TCP SYN timeout).
    request_queue_size = 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.conn_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # dropped connections are part of the tests


def _parse_range(header: str, size: int) -> tuple[int, int] | bool | None:
    """Range header -> (start, end exclusive); None = ignore the header; False = 416."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, sep, last = spec.strip().partition("-")
    if not sep:
        return None
    try:
        if not first:  # suffix: last n bytes
            n = int(last)
            if n <= 0 or size == 0:
                return False
            return max(0, size - n), size
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        return None
    if start < 0 or (last and end <= start):
        return None  # syntactically invalid: ignored, as RFC 9110 says
    if start >= size:
        return False
    return start, min(end, size)


class HTTPServer(Served):
    """Threaded ``http.server`` serving a temp folder at ``http://127.0.0.1:PORT/root``.

    ``peak_in_flight`` is the most requests it was answering at once since start/``reset()``.

    Fault knobs (settable any time; request numbers count from start/``reset()``, from 1):
    ``latency`` seconds before each response; every ``fail_every``-th request and the first
    ``fail_first`` requests get 503; ``ignore_range`` answers 200 with the whole file; every
    ``hang_every``-th request waits ``hang_seconds`` before answering; every
    ``stall_every``-th request sends its headers and half its body, then holds the
    connection for ``stall_seconds`` and closes it.

    ``gather(first, count)``: requests ``first`` to ``first + count - 1`` each wait until all
    ``count`` of them have arrived (at most ``gather_timeout`` seconds), so a client that
    sends them together has them all in flight at once whatever the machine's load, and a
    client that sends them one by one shows a peak of 1.
    """

    def __init__(self, latency: float = 0.0, fail_every: int = 0, fail_first: int = 0,
                 ignore_range: bool = False, hang_every: int = 0,
                 hang_seconds: float = 5.0, stall_every: int = 0,
                 stall_seconds: float = 60.0) -> None:
        super().__init__()
        self.latency = latency
        self.fail_every = fail_every
        self.fail_first = fail_first
        self.ignore_range = ignore_range
        self.hang_every = hang_every
        self.hang_seconds = hang_seconds
        self.stall_every = stall_every
        self.stall_seconds = stall_seconds
        self.url = ""
        self.missing_url = ""
        self.storage_options = {}
        self._count = 0
        self._count_lock = threading.Lock()
        self._in_flight = 0
        self.peak_in_flight = 0
        self._stopping = threading.Event()
        self._gather = (0, 0)
        self._gathered = threading.Condition()
        self._arrived = 0
        self.gather_timeout = 10.0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._httpd: _QuietThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def directory(self) -> Path:
        """Local folder behind ``url``."""
        assert self._tmp is not None, "server not started"
        return Path(self._tmp.name) / ROOT

    def gather(self, first: int = 0, count: int = 0) -> None:
        """Hold requests ``first`` .. ``first + count - 1`` until all have arrived (0: off)."""
        with self._gathered:
            self._gather, self._arrived = (first, count), 0

    def _wait_for_the_others(self, number: int) -> None:
        first, count = self._gather
        if not count or not first <= number < first + count:
            return
        with self._gathered:
            self._arrived += 1
            self._gathered.notify_all()
            self._gathered.wait_for(lambda: self._arrived >= count or self._stopping.is_set(),
                                    timeout=self.gather_timeout)

    def reset(self) -> None:
        """Clear ``requests`` and restart request numbering (for fail_*/hang_every)."""
        with self._count_lock:
            self._count = 0
        with self._gathered:
            self._arrived = 0
        super().reset()
        with self._count_lock:
            self.peak_in_flight = self._in_flight

    def _next_number(self) -> int:
        with self._count_lock:
            self._count += 1
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
            return self._count

    def _answered(self) -> None:
        with self._count_lock:
            self._in_flight -= 1

    def start(self) -> None:
        """Bind a free port and serve in a daemon thread."""
        self._tmp = tempfile.TemporaryDirectory(prefix="nest-http-")
        self.directory.mkdir()
        self._stopping.clear()
        self._httpd = _QuietThreadingHTTPServer((HOST, 0), self._handler_class())
        self._httpd.timeout = 1.0
        self.port = int(self._httpd.server_address[1])
        self.url = f"{self.endpoint}/{ROOT}"
        self.missing_url = f"{self.endpoint}/no-such-root"
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.1}, daemon=True,
                                        name=f"HTTPServer:{self.port}")
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, drop open connections, remove the temp folder."""
        if self._httpd is None:
            return
        self._stopping.set()  # wakes handlers sleeping for latency/hang
        self._httpd.shutdown()
        with self._httpd.conn_lock:
            conns = list(self._httpd.connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _put(self, key: str, data: bytes) -> None:
        dest = self.directory / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp-upload")
        tmp.write_bytes(data)
        os.replace(tmp, dest)

    def _delete(self, key: str) -> None:
        (self.directory / key).unlink()

    def upload(self, local_dir: Path, prefix: str = "") -> None:
        """Copy ``local_dir/<rel>`` to ``url/<prefix>/<rel>``."""
        dest = self.directory / _join(prefix) if _join(prefix) else self.directory
        shutil.copytree(local_dir, dest, dirs_exist_ok=True)

    def _resolve(self, url_path: str) -> Path | None:
        """URL path -> file under the served folder, or None."""
        base = Path(self._tmp.name).resolve() if self._tmp is not None else None
        if base is None:
            return None
        target = (base / url_path.lstrip("/")).resolve()
        if not target.is_relative_to(base) or not target.is_file():
            return None
        return target

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        served = self
        recorder = self._recorder

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = SOCKET_TIMEOUT_S
            # headers and body go out in separate writes: without TCP_NODELAY the body of a
            # small answer waits for the client's delayed ACK (about 40 ms), which no real
            # server adds
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._serve(head=False)

            def do_HEAD(self) -> None:
                self._serve(head=True)

            def _serve(self, head: bool) -> None:
                seq = recorder.arrived()
                number = served._next_number()
                served._wait_for_the_others(number)
                path, query = _split_target(self.path)
                rng = self.headers.get("Range")
                wait = max(0.0, float(served.latency))
                if served.hang_every > 0 and number % served.hang_every == 0:
                    wait += max(0.0, float(served.hang_seconds))
                if wait and served._stopping.wait(wait):
                    served._answered()
                    self.close_connection = True
                    return
                status, sent = 0, 0
                recorder.begin()
                try:
                    status, sent = self._respond(number, path, rng, head)
                except OSError:
                    self.close_connection = True
                finally:
                    served._answered()
                    recorder.end(seq, Request(self.command, path, status, sent, rng, query,
                                              self.headers.get("Authorization")))

            def _empty(self, status: int, headers: dict[str, str] | None = None) -> int:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return int(status)

            def _respond(self, number: int, path: str, rng: str | None,
                         head: bool) -> tuple[int, int]:
                fail = (number <= served.fail_first
                        or (served.fail_every > 0 and number % served.fail_every == 0))
                if fail:
                    return self._empty(HTTPStatus.SERVICE_UNAVAILABLE), 0
                file = served._resolve(path)
                if file is None:
                    return self._empty(HTTPStatus.NOT_FOUND), 0
                data = file.read_bytes()
                size = len(data)
                start, end, status = 0, size, 200
                if rng is not None and not served.ignore_range:
                    parsed = _parse_range(rng, size)
                    if parsed is False:
                        return self._empty(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                                           {"Content-Range": f"bytes */{size}"}), 0
                    if isinstance(parsed, tuple):
                        start, end = parsed
                        status = 206
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(end - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
                self.end_headers()
                if head:
                    return status, 0
                sent = 0
                view = memoryview(data)[start:end]
                chunk = 1 << 16
                if served.stall_every > 0 and number % served.stall_every == 0:
                    half = len(view) // 2
                    self.wfile.write(view[:half])
                    self.wfile.flush()
                    served._stopping.wait(max(0.0, float(served.stall_seconds)))
                    self.close_connection = True
                    return status, half
                try:
                    for i in range(0, len(view), chunk):
                        self.wfile.write(view[i:i + chunk])
                        sent += len(view[i:i + chunk])
                except OSError:
                    self.close_connection = True
                return status, sent

        return Handler


__all__ = ["GCSServer", "HTTPServer", "Request", "S3Server", "Served"]
