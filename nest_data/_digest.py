"""SHA-256 digests in the ``"sha256:<hex>"`` form every nest-data manifest uses."""

from __future__ import annotations

import hashlib
import os

__all__ = ["bytes_digest", "file_digest"]


def bytes_digest(data: bytes | bytearray | memoryview) -> str:
    """``"sha256:<hex>"`` of some bytes.

    Examples
    --------
    >>> bytes_digest(b"")[:15]
    'sha256:e3b0c442'
    """
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_digest(path: str | os.PathLike[str]) -> str:
    """``"sha256:<hex>"`` of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()
