"""A read-through disk cache of store objects, safe for several processes at once.

Objects are stored under their SHA-256 (content addressing), so an entry can never be stale:
a store that is rewritten gets new checksums and therefore new cache keys.  Every object is
verified against its checksum before it enters the cache.

- **Atomic**: an object is written to a temporary file in the same folder and renamed into
  place, so readers in other processes see the whole object or nothing.
- **Bounded**: when the cache grows past ``max_bytes`` it deletes least-recently-used objects
  (oldest modification time first; every cache hit refreshes the time) until it is below 90%
  of the limit.
- **Never fails a reader**: the cache is a shortcut, not a source.  An object evicted or
  cleared (by this or another process) while it is read is read from the store instead, and
  a write that fails because the cache was cleared meanwhile is skipped and logged.

Location: ``<cache dir>/chunks`` (``NEST_DATA_CACHE_DIR``); size limit: ``max_bytes=``, then
``NEST_DATA_CACHE_SIZE`` (bytes, or with a unit: ``500MB``, ``20GB``), then 10 GB.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nest_data import _config
from nest_data.errors import NestDataError

logger = logging.getLogger("nest_data")

ENV_CACHE_SIZE = "NEST_DATA_CACHE_SIZE"
DEFAULT_MAX_BYTES = 10 * 10**9
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}

__all__ = ["CacheInfo", "ChunkCache", "parse_size"]


def parse_size(text: str | int) -> int:
    """Parse ``"500MB"``, ``"2GiB"`` or ``"1000"`` into bytes.

    Examples
    --------
    >>> parse_size("1.5GB")
    1500000000
    """
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).upper() not in _UNITS:
        raise NestDataError(f"cannot read the size {text!r}; write a number of bytes with an "
                            f"optional unit ({', '.join(u for u in _UNITS if u)}), e.g. 20GB")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


@dataclass
class CacheInfo:
    """What is in the cache."""

    path: Path
    objects: int
    bytes: int
    max_bytes: int

    def __str__(self) -> str:
        return (f"{self.path}: {self.objects} objects, {self.bytes / 1e6:.1f} MB of "
                f"{self.max_bytes / 1e6:.0f} MB")


class ChunkCache:
    """Disk cache of store objects keyed by their SHA-256.

    Parameters
    ----------
    path : path, optional
        Folder of the cache (default ``<cache dir>/chunks``).
    max_bytes : int or str, optional
        Size limit (default ``NEST_DATA_CACHE_SIZE``, then 10 GB).

    Examples
    --------
    >>> import tempfile
    >>> cache = ChunkCache(tempfile.mkdtemp(), max_bytes="1MB")
    >>> cache.put("sha256:" + "ab" * 32, b"hello")
    >>> cache.get("sha256:" + "ab" * 32)
    b'hello'
    """

    def __init__(self, path: str | os.PathLike[str] | None = None,
                 max_bytes: int | str | None = None) -> None:
        self.path = Path(path) if path is not None else _config.cache_dir() / "chunks"
        env = os.environ.get(ENV_CACHE_SIZE)
        self.max_bytes = parse_size(max_bytes if max_bytes is not None else
                                    env if env else DEFAULT_MAX_BYTES)
        self._lock = threading.Lock()
        self._estimate: int | None = None

    def _file(self, digest: str) -> Path:
        hexdigest = digest.removeprefix("sha256:")
        if not re.fullmatch(r"[0-9a-f]{64}", hexdigest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self.path / hexdigest[:2] / hexdigest

    @classmethod
    def shared(cls) -> ChunkCache:
        """The process's cache for the current cache folder and size limit (one per folder).

        ``NEST_DATA_CACHE_DIR`` and ``NEST_DATA_CACHE_SIZE`` are read at each call, so
        changing them takes effect; opening many entries reuses one object.
        """
        env = os.environ.get(ENV_CACHE_SIZE)
        return _shared(_config.cache_dir() / "chunks",
                       parse_size(env) if env else DEFAULT_MAX_BYTES)

    def file(self, digest: str) -> Path:
        """The file that holds (or would hold) an object: for messages naming a bad entry."""
        return self._file(digest)

    def get(self, digest: str) -> bytes | None:
        """The cached object, or None; a hit refreshes its time for the eviction rule."""
        path = self._file(digest)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):  # absent, or evicted meanwhile
            return None
        try:
            os.utime(path)
        except OSError:  # evicted right after the read: the bytes read are whole
            pass
        return data

    def discard(self, digest: str) -> None:
        """Drop one object (a damaged entry); absent is fine."""
        self._file(digest).unlink(missing_ok=True)

    def put(self, digest: str, data: bytes) -> None:
        """Store an object (atomically) and evict old ones if the cache is over its limit.

        Never raises for the cache's own troubles (a concurrent ``clear``, a full disk): the
        object is then simply not kept, and a log line says why.
        """
        path = self._file(digest)
        if path.exists():
            return
        tmp = path.parent / f".tmp-{uuid.uuid4().hex}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as exc:
            logger.info("cache %s: not keeping %s (%s)", self.path, path.name, exc)
            return
        finally:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
        with self._lock:
            if self._estimate is None:
                self._estimate = self.info().bytes
            else:
                self._estimate += len(data)
            if self._estimate > self.max_bytes:
                self._estimate = self._evict()

    def _files(self) -> list[tuple[float, int, Path]]:
        out: list[tuple[float, int, Path]] = []
        if not self.path.is_dir():
            return out
        try:
            subs = list(self.path.iterdir())
        except FileNotFoundError:  # cleared meanwhile
            return out
        for sub in subs:
            try:
                names = list(sub.iterdir()) if sub.is_dir() else []
            except (FileNotFoundError, NotADirectoryError):
                continue
            for f in names:
                if f.name.startswith(".tmp-"):
                    continue
                try:
                    st = f.stat()
                except FileNotFoundError:
                    continue
                out.append((st.st_mtime, st.st_size, f))
        return out

    def _evict(self) -> int:
        files = sorted(self._files())
        total = sum(size for _, size, _ in files)
        target = int(self.max_bytes * 0.9)
        removed = 0
        for _, size, path in files:
            if total <= target:
                break
            path.unlink(missing_ok=True)
            total -= size
            removed += 1
        logger.info("cache %s: evicted %d objects, %d bytes left", self.path, removed, total)
        return total

    def info(self) -> CacheInfo:
        """Number of objects and bytes in the cache."""
        files = self._files()
        return CacheInfo(self.path, len(files), sum(size for _, size, _ in files),
                         self.max_bytes)

    def __reduce__(self) -> tuple[Any, ...]:
        return (ChunkCache, (self.path, self.max_bytes))

    def clear(self) -> int:
        """Delete every cached object; return how many bytes were freed."""
        freed = self.info().bytes
        shutil.rmtree(self.path, ignore_errors=True)
        with self._lock:
            self._estimate = 0
        return freed


@functools.lru_cache(maxsize=8)
def _shared(path: Path, max_bytes: int) -> ChunkCache:
    return ChunkCache(path, max_bytes)
