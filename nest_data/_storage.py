"""Turning a root URL and storage options into a Zarr store, and the read path around it.

Every store nest-data reads goes through :class:`NestStore`, a small wrapper that adds what
remote reading needs and zarr's ``FsspecStore`` does not do by itself:

- bounded retries with exponential backoff on transient failures (5xx, timeouts, dropped
  connections); other failures raise :class:`~nest_data.errors.RemoteReadError` naming the
  URL and what to check;
- a check that ranged reads returned the requested bytes (a server that ignores ``Range``
  gives correct data or a clear error, never wrong data);
- the root ``zarr.json`` (the consolidated metadata) kept in memory, so opening costs one
  request for it;
- an optional read-through disk cache of chunk objects, keyed by their SHA-256 (see
  :mod:`nest_data._cache`);
- optional verification of every object read against the store's manifest of checksums.

It is also the one owner of the read route: :attr:`NestStore.direct_folder` says whether an
object may be read straight from a local file (``pread``, the fast path of
:mod:`nest_data._reader` and :mod:`nest_data._labels`) or must come through :meth:`get`
(remote, verified or cached), and :meth:`NestStore.get_objects` reads whole objects by
whichever route that is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from zarr.abc.store import (
    ByteRequest,
    OffsetByteRequest,
    RangeByteRequest,
    Store,
    SuffixByteRequest,
)
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.storage import FsspecStore, LocalStore, WrapperStore

from nest_data._cache import ChunkCache
from nest_data._digest import bytes_digest
from nest_data._redact import describe_error, masked_error, redact_url
from nest_data._urls import is_local, local_path, validate_storage_options, with_timeouts
from nest_data.errors import (
    ChecksumError,
    LocationError,
    MissingObjectError,
    RemoteReadError,
)

logger = logging.getLogger("nest_data")

__all__ = ["NestStore", "make_store", "quiet_consolidated"]

#: HTTP statuses worth retrying.
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_BYTE_REQUESTS = (RangeByteRequest, OffsetByteRequest, SuffixByteRequest)
RETRIES = 4
#: Protocols whose fsspec file system retries transient failures on its own.
SELF_RETRYING = frozenset({"s3", "s3a", "gs", "gcs"})
BACKOFF = 0.1  # seconds, doubled on every retry


@contextlib.contextmanager
def quiet_consolidated() -> Iterator[None]:
    """Silence zarr's note that consolidated metadata is not yet in the Zarr v3 spec.

    nest-data relies on it on purpose (opening costs one request); the note is not for users.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata")
        yield


def make_store(
    url: str | os.PathLike[str],
    storage_options: Mapping[str, Any] | None = None,
    *,
    read_only: bool = True,
    cache: ChunkCache | None = None,
    verify: bool = False,
) -> NestStore:
    """A Zarr store for a local folder or an fsspec URL, wrapped in :class:`NestStore`.

    Storage options that the store would not use are an error, not silently dropped.

    Examples
    --------
    >>> make_store("/tmp/x.zarr").read_only
    True
    """
    text = os.fspath(url)
    options = dict(storage_options or {})
    inner: Store
    if is_local(text):
        if options:
            raise LocationError(
                f"storage options {sorted(options)} were given for the local path "
                f"{text!r}, where they have no use; drop them or give a remote URL "
                "(s3://, gs://, https://)"
            )
        folder: str | None = local_path(text)
        inner = LocalStore(local_path(text), read_only=read_only)
        retries = 0  # a local read that fails is not transient
    else:
        validate_storage_options(text, options)
        inner = FsspecStore.from_url(text, storage_options=with_timeouts(text, options),
                                     read_only=read_only)
        # s3fs and gcsfs retry transient failures themselves (their ``retries``): ours would
        # multiply theirs; fsspec's HTTP file system has none, so nest-data retries there
        retries = 0 if text.split("://", 1)[0] in SELF_RETRYING else RETRIES
        folder = None
    return NestStore(inner, url=text, cache=cache, verify=verify, retries=retries,
                     folder=folder)


class NestStore(WrapperStore[Store]):
    """The read path of nest-data stores: retries, Range check, metadata memo, cache, verify.

    Parameters
    ----------
    store : zarr Store
        The store to wrap (``LocalStore`` or ``FsspecStore``).
    url : str
        The store's URL, for messages; kept with its credentials masked
        (:func:`~nest_data._redact.redact_url`).
    cache : ChunkCache, optional
        Disk cache for objects listed in the manifest.
    verify : bool
        Check every object listed in the manifest against its SHA-256 when read.
    manifest : dict, optional
        Object key -> ``"sha256:<hex>"``; read from the store's attributes by
        :meth:`with_manifest`.  An object the manifest lists but the storage lacks raises
        :class:`~nest_data.errors.MissingObjectError` (zarr would read it as fill values).
    chunk_rows : int
        Images per chunk of ``responses``, to name the images a missing chunk covers.
    folder : str, optional
        The local folder the wrapped store reads (None for a remote one).
    """

    def __init__(self, store: Store, *, url: str = "", cache: ChunkCache | None = None,
                 verify: bool = False, manifest: Mapping[str, str] | None = None,
                 retries: int = RETRIES, backoff: float = BACKOFF, chunk_rows: int = 0,
                 folder: str | None = None) -> None:
        super().__init__(store)
        self.url = redact_url(url)
        self.folder = folder
        self.cache = cache
        self.verify = verify
        self.manifest = dict(manifest or {})
        self.chunk_rows = chunk_rows
        self.n_images = 0  # set by the opener once known; bounds the images a chunk covers
        self.retries = retries
        self.backoff = backoff
        self._memo: dict[str, bytes] = {}

    def _with_store(self, store: Store) -> NestStore:
        return NestStore(store, url=self.url, cache=self.cache, verify=self.verify,
                         manifest=self.manifest, retries=self.retries, backoff=self.backoff,
                         chunk_rows=self.chunk_rows, folder=self.folder)

    def with_manifest(self, manifest: Mapping[str, str], chunk_rows: int = 0) -> NestStore:
        """The same store, checking, caching and requiring the objects of ``manifest``."""
        new = self._with_store(self._store)
        new.manifest = dict(manifest)
        new.chunk_rows = chunk_rows
        new._memo = self._memo
        return new

    def __str__(self) -> str:
        return self.url or str(self._store)

    def __repr__(self) -> str:
        return f"NestStore({self.url!r})"

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return (type(self).__name__, self.url, self.verify, self.cache is not None,
                self.manifest.get("responses/zarr.json"))

    # -- the read route: decided here, once ----------------------------------------------

    @property
    def remote(self) -> bool:
        """Whether objects come over the network (each read is a request)."""
        return self.folder is None

    @property
    def reads_whole_objects(self) -> bool:
        """Whether every object the manifest lists is read whole: its checksum
        (``verify``) and the cache cover whole objects, so a part of one is cut from it."""
        return self.verify or self.cache is not None

    @property
    def direct_folder(self) -> str | None:
        """The local folder whose files may be read directly (``pread``), or None when
        every read must come through :meth:`get` (a remote store, or one that verifies or
        caches).  The fast paths of :mod:`nest_data._reader` and :mod:`nest_data._labels`
        ask this, and nothing else, which route to take."""
        return None if self.reads_whole_objects else self.folder

    async def get_objects(self, keys: Sequence[str]) -> list[bytes | None]:
        """Whole objects by key, by the store's route: local files read directly, or
        every ``get`` at once (a remote store answers them in about one round trip).

        Every object is checked against the SHA-256 the manifest records for it, whether
        or not ``verify`` is on (the objects read whole are a store's labels, which carry
        no checksum of their own).  An object the manifest lists and the storage lacks
        raises :class:`~nest_data.errors.MissingObjectError`; one it does not list is None,
        or, if present, a :class:`~nest_data.errors.ChecksumError`.
        """
        folder = self.direct_folder
        if folder is not None:
            blobs = [_read_file(os.path.join(folder, key)) for key in keys]
        else:
            proto = default_buffer_prototype()
            buffers = await asyncio.gather(*(self.get(key, proto) for key in keys))
            blobs = [None if b is None else b.to_bytes() for b in buffers]
        for key, blob in zip(keys, blobs, strict=True):
            if blob is None and key in self.manifest:
                raise self.missing(key)
            if blob is not None and self.manifest:
                if key not in self.manifest:
                    raise ChecksumError(
                        f"object {key} of {self.url} is not in the store's manifest: it was "
                        "added after the store was written, so its values cannot be trusted. "
                        "Re-mirror or re-convert this entry, and run `nest-data verify` on "
                        "its root.")
                if folder is not None or not self.reads_whole_objects:  # else get checked it
                    self._check(key, blob, self.manifest[key])
        return blobs

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        if byte_range is not None and not isinstance(byte_range, _BYTE_REQUESTS):
            raise TypeError(f"Unexpected byte_range, got {byte_range!r}; zarr stores take a "
                            "RangeByteRequest, OffsetByteRequest or SuffixByteRequest")
        if byte_range is None and key == "zarr.json" and key in self._memo:
            return prototype.buffer.from_bytes(self._memo[key])
        if byte_range is not None and key in self.manifest and self.reads_whole_objects:
            # A checksum covers whole objects, and the cache keeps whole objects: read the
            # object (verified, cached), then cut the range from it.
            whole = await self.get(key, prototype)
            if whole is None:  # pragma: no cover - get raises for listed objects
                raise self.missing(key)
            start, stop = _range_bounds(byte_range, len(whole))
            return whole[start:stop]
        digest = self.manifest.get(key) if byte_range is None else None
        if digest is not None and self.cache is not None:
            cached = self.cache.get(digest)
            # Always checked: a cache hit must be as trustworthy as the source, and hashing
            # costs little next to the remote read the cache saves.
            if cached is not None and bytes_digest(cached) != digest:
                logger.warning("cache file %s of %s/%s does not match its checksum; dropped "
                               "it and reading the object from the store",
                               self.cache.file(digest), self.url, key)
                self.cache.discard(digest)
                cached = None
            if cached is not None:
                return prototype.buffer.from_bytes(cached)
        buffer = await self._get_with_retries(key, prototype, byte_range)
        if buffer is None:
            if key in self.manifest:
                raise self.missing(key)
            return None
        if byte_range is not None:
            return await self._check_range(key, prototype, byte_range, buffer)
        if key == "zarr.json":
            self._memo[key] = buffer.to_bytes()
        if digest is not None and self.reads_whole_objects:
            data = buffer.to_bytes()
            self._check(key, data, digest)
            if self.cache is not None:
                self.cache.put(digest, data)
        return buffer

    def _check(self, key: str, data: bytes, digest: str) -> None:
        got = bytes_digest(data)
        if got != digest:
            raise ChecksumError(
                f"object {key} of {self.url} does not match its recorded checksum "
                f"({got} != {digest}): it was modified after the store was written. "
                "Re-mirror or re-convert this entry, and run `nest-data verify` on its root.")

    def missing(self, key: str) -> MissingObjectError:
        """The error for an object the manifest lists and the storage lacks."""
        where = ""
        if key.startswith("responses/c/") and self.chunk_rows:
            start = int(key.split("/")[2]) * self.chunk_rows
            stop = start + self.chunk_rows
            stop = min(stop, self.n_images) if self.n_images else stop
            where = f" (images {start}-{stop - 1})"
        return MissingObjectError(
            f"object {key} of {self.url}{where} is missing: the store's manifest lists it, so "
            "it was written and has since been deleted or not copied completely. Nothing is "
            "read as a fill value in its place. Re-mirror or re-convert this entry, and run "
            "`nest-data verify` on its root to find other damage.")

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        # every read takes the checked path of ``get``, never the wrapped store's directly
        return list(await asyncio.gather(*(self.get(key, prototype, byte_range)
                                           for key, byte_range in key_ranges)))

    # Writes pass through to the wrapped store and drop the in-memory root metadata.
    async def set(self, key: str, value: Buffer) -> None:
        self._memo.pop(key, None)
        await self._store.set(key, value)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        self._memo.pop(key, None)
        await self._store.set_if_not_exists(key, value)

    async def _set_many(self, values: Iterable[tuple[str, Buffer]]) -> None:
        values = list(values)
        for key, _ in values:
            self._memo.pop(key, None)
        await self._store._set_many(values)

    async def delete(self, key: str) -> None:
        self._memo.pop(key, None)
        await self._store.delete(key)

    async def clear(self) -> None:
        self._memo.clear()
        await self._store.clear()

    async def _get_with_retries(self, key: str, prototype: BufferPrototype,
                                byte_range: ByteRequest | None) -> Buffer | None:
        for attempt in range(self.retries + 1):
            try:
                return await self._store.get(key, prototype, byte_range)
            except FileNotFoundError:  # a local root that does not exist: nothing in it
                return None
            except Exception as exc:
                failure = describe_error(exc, self._options())
                if not _is_transient(exc):
                    raise RemoteReadError(_read_failure(self.url, key, exc, failure)
                                          ) from masked_error(exc, self._options())
                if attempt == self.retries:
                    hint = ("the server stopped sending (no bytes within the read timeout; "
                            "raise it with nest_data.set_options(read_timeout=...) or "
                            "NEST_DATA_READ_TIMEOUT)" if isinstance(exc, TimeoutError)
                            else "the server is unreachable or overloaded")
                    raise RemoteReadError(
                        f"reading {key} from {self.url} failed {self.retries + 1} times "
                        f"(last: {failure}); {hint}. Try again later, or "
                        "check the URL and your network."
                    ) from masked_error(exc, self._options())
                delay = self.backoff * 2**attempt
                logger.info("retrying %s/%s in %.2f s after %s", self.url, key, delay, failure)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _options(self) -> Mapping[str, Any]:
        """The storage options of the wrapped store's file system (none for a local one):
        whose values a file system's error must not carry into a message."""
        fs = getattr(self._store, "fs", None)
        return dict(getattr(fs, "storage_options", None) or {})

    async def _check_range(self, key: str, prototype: BufferPrototype,
                           byte_range: ByteRequest, buffer: Buffer) -> Buffer:
        """Return exactly the requested bytes, or fail: never pass on a wrong-sized answer.

        A server that ignores ``Range`` answers with the whole object; the requested bytes
        are then cut from it (no second request).
        """
        data = buffer.to_bytes()
        if isinstance(byte_range, RangeByteRequest) and len(data) == (byte_range.end
                                                                     - byte_range.start):
            return buffer
        if isinstance(byte_range, SuffixByteRequest) and len(data) == byte_range.suffix:
            return buffer
        size = await self._store.getsize(key)
        start, stop = _range_bounds(byte_range, size)
        if len(data) == stop - start:
            return buffer
        if len(data) == size:
            logger.warning("%s/%s: the server ignored a Range request and sent the whole "
                           "object", self.url, key)
            return prototype.buffer.from_bytes(data[start:stop])
        raise RemoteReadError(
            f"{self.url}/{key}: asked for bytes {byte_range} and got {len(data)} bytes that "
            "are neither that range nor the whole object; the server mishandles Range "
            "requests. Use another server, or mirror the data locally (nest-data mirror)."
        )


def _range_bounds(byte_range: ByteRequest, size: int) -> tuple[int, int]:
    """``(start, stop)`` of a byte request on an object of ``size`` bytes."""
    if isinstance(byte_range, RangeByteRequest):
        return min(byte_range.start, size), min(byte_range.end, size)
    if isinstance(byte_range, OffsetByteRequest):
        return min(byte_range.offset, size), size
    return max(size - byte_range.suffix, 0), size


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None) or getattr(exc, "code", None)
    return status if isinstance(status, int) else None


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    status = _status(exc)
    if status is not None:
        return status in TRANSIENT_STATUS
    name = type(exc).__name__
    return name in {"ClientConnectionError", "ServerDisconnectedError", "ClientPayloadError",
                    "ClientOSError", "ServerTimeoutError", "ClientConnectorError"}


def _read_failure(url: str, key: str, exc: BaseException, text: str) -> str:
    """The message of a read that failed with ``exc`` (``text``: it, credentials masked)."""
    status = _status(exc)
    if status in (401, 403) or isinstance(exc, PermissionError):
        hint = ("access was denied: check your credentials, or for a public bucket the "
                "anonymous flag (anon=True for S3, token='anon' for GCS) in the location's "
                "storage_options")
    else:
        hint = ("check the URL, the location's storage_options, and that the bucket or "
                "server exists")
    return f"reading {key} from {url} failed ({text}); {hint}."


def _read_file(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None
