"""zarr's own store contract (``zarr.testing.store.StoreTests``) run against :class:`NestStore`.

``NestStore`` wraps the store every nest-data read goes through; here it must behave as a
Zarr store in every respect zarr itself checks, over a local folder and over S3 (moto on
127.0.0.1), with and without a disk cache.  The nest-data specific read checks (manifest,
missing objects, Range answers) are covered in ``test_faults.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from zarr.core.buffer import default_buffer_prototype
from zarr.core.buffer.cpu import Buffer
from zarr.storage import FsspecStore, LocalStore
from zarr.testing.store import StoreTests

from nest_data._cache import ChunkCache
from nest_data._storage import NestStore

from .servers import BUCKET, S3Server


class _NestStoreTests(StoreTests[NestStore, Buffer]):
    """What StoreTests leaves to each store class, the same for every backend here."""

    store_cls = NestStore
    buffer_cls = Buffer

    def test_store_repr(self, store: NestStore) -> None:
        assert repr(store).startswith("NestStore(")

    def test_store_supports_writes(self, store: NestStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: NestStore) -> None:
        assert store.supports_listing


class TestNestStoreLocal(_NestStoreTests):

    async def get(self, store: NestStore, key: str) -> Buffer:
        return self.buffer_cls.from_bytes((store._store.root / key).read_bytes())

    async def set(self, store: NestStore, key: str, value: Buffer) -> None:
        path = store._store.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(value.to_bytes())

    @pytest.fixture
    def store_kwargs(self, tmp_path: Path) -> dict[str, Any]:
        return {"store": LocalStore(str(tmp_path))}

    @pytest.fixture
    def open_kwargs(self, tmp_path: Path) -> dict[str, Any]:
        return {"store_cls": LocalStore, "root": str(tmp_path)}

    async def test_metadata_memo_follows_writes(self, store: NestStore) -> None:
        """The in-memory root ``zarr.json`` never outlives a write or delete of it."""
        proto = default_buffer_prototype()
        await store.set("zarr.json", self.buffer_cls.from_bytes(b'{"a": 1}'))
        assert (await store.get("zarr.json", proto)).to_bytes() == b'{"a": 1}'  # type: ignore[union-attr]
        await store.set("zarr.json", self.buffer_cls.from_bytes(b'{"a": 2}'))
        assert (await store.get("zarr.json", proto)).to_bytes() == b'{"a": 2}'  # type: ignore[union-attr]
        await store.delete("zarr.json")
        assert await store.get("zarr.json", proto) is None


class TestNestStoreCached(TestNestStoreLocal):
    """The same contract with a chunk cache configured: objects outside a manifest (all of
    these) must pass through it unchanged."""

    @pytest.fixture
    async def store(self, open_kwargs: dict[str, Any],
                    tmp_path_factory: pytest.TempPathFactory) -> NestStore:
        inner = open_kwargs["store_cls"](open_kwargs["root"])
        await inner._open()
        return NestStore(inner, cache=ChunkCache(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    pytest.importorskip("s3fs")
    with S3Server() as server:
        yield server


class TestNestStoreS3(_NestStoreTests):
    @pytest.fixture
    def prefix(self) -> str:
        return f"contract-{uuid.uuid4().hex}"

    async def get(self, store: NestStore, key: str) -> Buffer:
        return self.buffer_cls.from_bytes(await store._store.fs._cat_file(
            f"{store._store.path}/{key}"))

    async def set(self, store: NestStore, key: str, value: Buffer) -> None:
        await store._store.fs._pipe_file(f"{store._store.path}/{key}", value.to_bytes())

    @pytest.fixture
    async def store_kwargs(self, s3: S3Server, prefix: str) -> dict[str, Any]:
        # a new file system in the test's event loop, which the async S3 client binds to
        from s3fs import S3FileSystem

        S3FileSystem.clear_instance_cache()
        inner = FsspecStore.from_url(f"s3://{BUCKET}/{prefix}", read_only=False,
                                     storage_options=s3.storage_options)
        return {"store": inner}

    @pytest.fixture
    def open_kwargs(self, store_kwargs: dict[str, Any]) -> dict[str, Any]:
        inner = store_kwargs["store"]
        return {"store_cls": FsspecStore, "fs": inner.fs, "path": inner.path}
