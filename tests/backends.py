"""The test entry served from every backend: local, memory, S3 (moto), GCS (emulator), HTTP.

The fixtures ``chunked`` (the entry written locally in chunks of 4 images) and ``backend``
(a served copy of it) live in ``tests/conftest.py``; this module holds what tests do with them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fsspec

import nest_data
from nest_data._format import DATA_VAR

KEYS = {"imageset": "things", "subject": 1, "roi": "V1"}
ROWS = 4  # images per chunk in the test store: 30 images -> 8 chunks


class Backend:
    """A served copy of the ``chunked`` root, and how to read what its server saw."""

    def __init__(self, name: str, url: str, options: dict[str, Any], server: Any) -> None:
        self.name, self.url, self.options, self.server = name, url, options, server

    def requests(self) -> list[Any]:
        return [] if self.server is None else self.server.requests

    def reset(self) -> None:
        if self.server is not None:
            self.server.reset()


def open_entry(backend: Backend, **kw: Any) -> Any:
    """``nest_data.open`` of the test entry on a backend."""
    return nest_data.open(location=backend.url, storage_options=backend.options, **KEYS, **kw)


def chunk_requests(requests: list[Any]) -> list[Any]:
    """The GETs of ``responses`` chunks among a server's requests."""
    return [r for r in requests if f"/{DATA_VAR}/c/" in r.path and r.method == "GET"]


def remove_object(backend: Backend, key: str) -> None:
    """Delete one object of the served copy (``key`` relative to the root)."""
    if backend.name == "local":
        (Path(backend.url) / key).unlink()
    elif backend.name == "memory":
        fsspec.filesystem("memory").rm(f"{backend.url.removeprefix('memory://')}/{key}")
    else:
        backend.server.remove(key)


def restore_object(backend: Backend, key: str, data: bytes) -> None:
    """Put one object of the served copy back (or replace it with ``data``)."""
    if backend.name == "local":
        (Path(backend.url) / key).write_bytes(data)
    elif backend.name == "memory":
        fsspec.filesystem("memory").pipe(f"{backend.url.removeprefix('memory://')}/{key}",
                                         data)
    else:
        backend.server.tamper(key, data)

