"""Where a shard's bytes come from: fetched into memory, or read from a local file."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol

from nest_data.errors import ChecksumError

__all__ = ["InMemory", "LocalFile", "Source", "pread"]


class Source(Protocol):
    def bytes(self, offset: int, length: int, into: memoryview | None = None
              ) -> memoryview | None:
        """Bytes ``offset..offset+length`` of the object (copied into ``into`` if given), or
        None if it has no such bytes."""


class InMemory:
    """Bytes of an object fetched into memory, from byte ``base`` of the object on."""

    def __init__(self, data: memoryview, base: int) -> None:
        self.data, self.base = data, base

    def bytes(self, offset: int, length: int, into: memoryview | None = None
              ) -> memoryview | None:
        start = offset - self.base
        if start < 0 or start + length > len(self.data):
            return None
        if into is None:
            return self.data[start:start + length]
        into[:] = self.data[start:start + length]
        return into


class LocalFile:
    """An open local object, read one range at a time into a reused per-thread buffer
    (or into the caller's)."""

    def __init__(self, fd: int, size: int, key: str,
                 buffer: Callable[[str, int], memoryview]) -> None:
        self.fd, self.size, self.key, self.buffer = fd, size, key, buffer

    def bytes(self, offset: int, length: int, into: memoryview | None = None
              ) -> memoryview | None:
        if offset < 0 or offset + length > self.size:
            return None
        data = self.buffer("chunk", length) if into is None else into
        pread_into(self.fd, data, offset, self.key)
        return data


def pread(fd: int, lo: int, hi: int, key: str) -> memoryview:
    data = memoryview(bytearray(hi - lo))
    pread_into(fd, data, lo, key)
    return data


def pread_into(fd: int, data: memoryview, offset: int, key: str) -> None:
    done = 0
    while done < len(data):
        n = os.preadv(fd, [data[done:]], offset + done)
        if n == 0:
            raise ChecksumError(f"object {key} ended after {offset + done} bytes while "
                                f"{offset + len(data)} were expected; it was truncated")
        done += n
