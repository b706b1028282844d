"""Turning a root URL and storage options into a Zarr store."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from zarr.abc.store import Store
from zarr.storage import FsspecStore, LocalStore

from nest_data.errors import LocationError

__all__ = ["is_local", "join", "make_store"]


def is_local(url: str | os.PathLike[str]) -> bool:
    """Whether ``url`` names a local folder (a plain path or ``file://``)."""
    text = os.fspath(url)
    return "://" not in text or text.startswith("file://")


def join(root: str | os.PathLike[str], path: str) -> str:
    """Join a root URL or folder and a relative store path with ``/``."""
    return os.fspath(root).rstrip("/") + "/" + path.lstrip("/")


def make_store(
    url: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None,
    *, read_only: bool = True,
) -> Store:
    """A Zarr store for a local folder or an fsspec URL.

    Storage options that the store would not use are an error, not silently dropped.

    Examples
    --------
    >>> make_store("/tmp/x.zarr").read_only
    True
    """
    text = os.fspath(url)
    if is_local(text):
        if storage_options:
            raise LocationError(
                f"storage options {sorted(storage_options)} were given for the local path "
                f"{text!r}, where they have no use; drop them or give a remote URL "
                "(s3://, gs://, https://)"
            )
        return LocalStore(text.removeprefix("file://"), read_only=read_only)
    return FsspecStore.from_url(text, storage_options=dict(storage_options or {}),
                                read_only=read_only)
