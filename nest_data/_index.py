"""What a location holds: the index object at its root, kept by every writer of stores.

The root of a location holds one small JSON object, ``nest-data-index.json``, naming each
store under it with its catalog keys, its size in bytes (all its objects), its format
version and the SHA-256 of its root ``zarr.json``.  :func:`nest_data._staging.commit`
records every store it places (weights folders are not stores and are not listed);
:func:`existing_paths` answers "which stores are here" in one request, from a listing (or,
over HTTP, one probe per candidate path) at roots written before the index existed;
``verify`` compares the index with what is there; :func:`write_index` (``nest-data index
ROOT``) rebuilds it.  Opening one entry never reads the index.

Writers at the same time: each read-modify-write of the index holds the root's lock
(:mod:`nest_data._locks`: a ``flock`` on the root folder locally, a lock object
``.nest-data-index.lock`` in a bucket).  Locally the new index replaces the old by a
rename, in a bucket by one PUT: a reader sees one whole index or the other.  A remote
writer reads the index back after writing it and writes again while its record is missing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
from fsspec.asyn import sync as fsspec_sync
from fsspec.implementations.http import HTTPFileSystem
from tqdm.auto import tqdm

from nest_data import _config
from nest_data._digest import bytes_digest
from nest_data._format import ATTR
from nest_data._locks import local_lock, remote_lock
from nest_data._redact import describe_error, masked_error, redact_url
from nest_data._urls import is_local, join, local_path, validate_storage_options, with_timeouts
from nest_data.errors import (
    IndexFormatError,
    IndexLockError,
    IndexVersionError,
    LocationError,
    RemoteReadError,
    StoreNotFoundError,
)

logger = logging.getLogger("nest_data")

INDEX_FILE = "nest-data-index.json"
LOCK_FILE = ".nest-data-index.lock"
STAGING_DIR = ".nest-data-staging"
INDEX_FORMAT = "nest-data index"
INDEX_VERSION = "1.0"  # major.minor: a reader refuses a newer major version
PROBES = 16  # existence probes in flight at an unlistable (HTTP) root without an index
WRITE_TRIES = 5  # remote index writes whose read-back lacks the record are retried

__all__ = ["INDEX_FILE", "Index", "StoreRecord", "existing_paths", "find_stores",
           "list_stores", "probe_stores", "read_index", "read_object", "record_mismatches",
           "record_of", "record_store", "store_exists", "write_index"]


@dataclass(frozen=True)
class StoreRecord:
    """What the index says of one store: keys, bytes, format version, metadata checksum."""

    keys: dict[str, Any]
    nbytes: int
    format_version: int
    metadata_sha256: str

    @classmethod
    def of(cls, metadata: bytes, nbytes: int) -> StoreRecord:
        """The record of a store whose root ``zarr.json`` holds ``metadata``."""
        meta = json.loads(metadata).get("attributes", {}).get(ATTR, {})
        return cls(dict(meta.get("keys", {})), int(nbytes), int(meta.get("format_version", 0)),
                   bytes_digest(metadata))


@dataclass
class Index:
    """The stores a location holds, by path relative to its root.

    Examples
    --------
    >>> from nest_data._demo import demo_root
    >>> index = read_index(demo_root())
    >>> record = index.stores["modality-fmri/train_dataset-nsd/model-fwrf/imageset-things/"
    ...                       "sub-01_roi-V1.zarr"]
    >>> from nest_data._format import FORMAT_VERSION
    >>> record.keys["roi"], record.format_version == FORMAT_VERSION, record.metadata_sha256[:7]
    ('V1', True, 'sha256:')
    """

    stores: dict[str, StoreRecord] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """The index object: JSON, stores sorted by path."""
        doc = {"format": INDEX_FORMAT, "version": INDEX_VERSION,
               "stores": {p: {"keys": r.keys, "nbytes": r.nbytes,
                              "format_version": r.format_version,
                              "metadata_sha256": r.metadata_sha256}
                          for p, r in sorted(self.stores.items())}}
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes, root: str) -> Index:
        """Parse an index object read at ``root``.

        Raises
        ------
        IndexVersionError
            A newer major version than this nest-data reads.
        IndexFormatError
            Not JSON, or not a nest-data index, or a malformed record.
        """
        where = join(root, INDEX_FILE)
        fix = f"rebuild it with `nest-data index {root}`"
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise IndexFormatError(f"{where} is damaged: not JSON ({exc}); {fix}") from exc
        if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
            found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise IndexFormatError(f"{where} is not a nest-data index (format {found!r}, "
                                   f"expected {INDEX_FORMAT!r}); {fix}")
        version = str(doc.get("version", ""))
        major = version.split(".", 1)[0]
        if not major.isdigit():
            raise IndexFormatError(f"{where} has version {version!r}, expected 'MAJOR.MINOR' "
                                   f"such as {INDEX_VERSION!r}; {fix}")
        if int(major) > int(INDEX_VERSION.split(".", 1)[0]):
            raise IndexVersionError(f"{where} is a version {version} index, newer than this "
                                    f"nest-data reads (version {INDEX_VERSION} and older); "
                                    "upgrade nest-data: pip install -U nest-data")
        try:
            stores = {str(p): StoreRecord(dict(r["keys"]), int(r["nbytes"]),
                                          int(r["format_version"]), str(r["metadata_sha256"]))
                      for p, r in doc["stores"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise IndexFormatError(f"{where} is damaged: a store record lacks or mistypes "
                                   f"{exc}; {fix}") from exc
        return cls(stores)


# --------------------------------------------------------------------------------------
# Reading: the index, a listing, probes
# --------------------------------------------------------------------------------------


def read_index(root: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None
               ) -> Index | None:
    """The index at ``root`` (one request), or None when the root has none.

    Raises
    ------
    IndexFormatError
        The index is damaged (the message says to run ``nest-data index ROOT``), or newer
        than this nest-data reads (:class:`~nest_data.errors.IndexVersionError`).
    RemoteReadError
        A remote root that cannot be reached.
    """
    raw = read_object(os.fspath(root), dict(storage_options or {}), INDEX_FILE)
    return None if raw is None else Index.from_bytes(raw, os.fspath(root))


def existing_paths(root: str | os.PathLike[str],
                   storage_options: Mapping[str, Any] | None = None, *,
                   candidates: Iterable[str] | None = None) -> set[str]:
    """Paths (relative to ``root``) of the stores that exist there.

    The index answers when the root has one (one request); else a listing (a local walk,
    ``find`` on S3 or GCS); else, at an HTTP root, one probe per path of ``candidates``
    (the catalog's paths), :data:`PROBES` at a time.

    Raises
    ------
    LocationError
        An HTTP root without an index, and no ``candidates`` to probe.
    StoreNotFoundError
        A local root that is not a folder.

    Examples
    --------
    >>> from nest_data._demo import demo_root
    >>> paths = existing_paths(demo_root())
    >>> "modality-fmri/train_dataset-nsd/model-fwrf/imageset-things/sub-01_roi-V1.zarr" in paths
    True
    """
    text, options = os.fspath(root), dict(storage_options or {})
    if not is_local(text):
        validate_storage_options(text, options)
    index = read_index(text, options)
    listed = list_stores(text, options) if index is None else index.stores
    if listed is not None:
        return set(listed)
    if candidates is None:
        raise LocationError(f"{text} cannot be listed (HTTP) and has no {INDEX_FILE}; publish "
                            "an index with its stores (`nest-data index` where the files are) "
                            "or ask about catalog entries")
    return probe_stores(text, options, candidates)


def store_exists(root: str | os.PathLike[str], path: str,
                 storage_options: Mapping[str, Any] | None = None) -> bool:
    """Whether a committed store (its root ``zarr.json``) exists at ``root/path``."""
    url = join(root, path)
    if is_local(url):
        return (Path(local_path(url)) / "zarr.json").is_file()
    fs, base = fsspec.core.url_to_fs(url, **with_timeouts(url, storage_options or {}))
    return bool(fs.exists(f"{base}/zarr.json"))


def probe_stores(root: str, storage_options: Mapping[str, Any], candidates: Iterable[str]
                 ) -> set[str]:
    """Which of ``candidates`` hold a store at an HTTP root: concurrent, bounded probes."""
    paths = list(dict.fromkeys(candidates))
    fs, base = fsspec.core.url_to_fs(root, **with_timeouts(root, storage_options))
    if not isinstance(fs, HTTPFileSystem):
        return {p for p in paths if store_exists(root, p, storage_options)}

    async def probe() -> list[bool]:
        semaphore = asyncio.Semaphore(PROBES)

        async def one(path: str) -> bool:
            async with semaphore:
                return bool(await fs._exists(f"{join(base, path)}/zarr.json"))

        return await asyncio.gather(*(one(p) for p in paths))

    flags = fsspec_sync(fs.loop, probe)
    return {p for p, ok in zip(paths, flags, strict=True) if ok}


def find_stores(root: str | os.PathLike[str]) -> list[Path]:
    """Every nest-data store under a local root (staging folders excluded), sorted."""
    base = Path(root)
    if not base.is_dir():
        raise StoreNotFoundError(f"{base} is not a folder; give the root of a collection "
                                 "(the DEST of `nest-data convert`)")
    return sorted(_walk(base))


def _walk(folder: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d != STAGING_DIR)
        if "zarr.json" in filenames and _is_entry(Path(dirpath) / "zarr.json"):
            dirnames[:] = []
            yield Path(dirpath)


def _is_entry(meta_file: Path) -> bool:
    try:
        doc = json.loads(meta_file.read_text())
    except (OSError, ValueError):
        return False
    return doc.get("node_type") == "group" and ATTR in doc.get("attributes", {})


def list_stores(root: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None
                ) -> dict[str, int] | None:
    """Every store under a listable root: relative path -> bytes of all its objects.

    None when the file system cannot list (HTTP).  Staging folders are skipped.
    """
    text = os.fspath(root)
    if is_local(text):
        base = Path(local_path(text))
        return {p.relative_to(base).as_posix(): folder_nbytes(p) for p in find_stores(base)}
    fs, base = fsspec.core.url_to_fs(text, **dict(storage_options or {}))
    if isinstance(fs, HTTPFileSystem):
        return None
    base = base.rstrip("/")
    try:
        found = fs.find(base, detail=True)
    except FileNotFoundError as exc:  # a bucket that does not exist
        raise StoreNotFoundError(f"{redact_url(text)} does not exist ("
                                 f"{describe_error(exc, storage_options)}); check the URL and "
                                 "the bucket's name") from masked_error(exc, storage_options)
    except Exception as exc:
        raise RemoteReadError(f"cannot list {redact_url(text)} ("
                              f"{describe_error(exc, storage_options)}); check the URL, your "
                              "credentials and your network"
                              ) from masked_error(exc, storage_options)
    files = {path[len(base):].strip("/"): int(info.get("size") or 0)
             for path, info in found.items()}
    sizes = {rel.removesuffix("/zarr.json"): 0 for rel in files
             if rel.endswith(".zarr/zarr.json") and STAGING_DIR not in rel}
    for rel, size in files.items():
        head, sep, _ = rel.partition(".zarr/")
        if sep and head + ".zarr" in sizes:
            sizes[head + ".zarr"] += size
    return dict(sorted(sizes.items()))


def folder_nbytes(folder: Path) -> int:
    """Bytes of every file under a local folder."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def read_object(root: str, options: dict[str, Any], name: str) -> bytes | None:
    """The bytes of ``root/name``, None when absent; a remote root out of reach raises."""
    url = join(root, name)
    if is_local(url):
        try:
            return Path(local_path(url)).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
    fs, path = fsspec.core.url_to_fs(url, **with_timeouts(url, options))
    try:
        return bytes(fs.cat_file(path))
    except FileNotFoundError:
        return None
    except Exception as exc:
        raise RemoteReadError(f"cannot reach {root} ({describe_error(exc, options)}); check the "
                              "URL, that the server runs, and your network"
                              ) from masked_error(exc, options)


def record_mismatches(record: StoreRecord, metadata: bytes) -> list[str]:
    """How a store (its root ``zarr.json`` bytes) differs from its record in the index.

    Sizes are not compared: a damaged object is :func:`~nest_data._verify.verify_store`'s
    to name, with its checksum.
    """
    found = StoreRecord.of(metadata, record.nbytes)
    out = []
    if found.metadata_sha256 != record.metadata_sha256:
        out.append(f"its metadata (zarr.json) has checksum {found.metadata_sha256}, the index "
                   f"records {record.metadata_sha256}")
    if found.format_version != record.format_version:
        out.append(f"its format version is {found.format_version}, the index records "
                   f"{record.format_version}")
    return out


# --------------------------------------------------------------------------------------
# Writing: one record per commit, or the whole index rebuilt
# --------------------------------------------------------------------------------------


def record_of(folder: Path) -> StoreRecord:
    """The record of a complete store in a local folder (a stage about to be committed)."""
    return StoreRecord.of((folder / "zarr.json").read_bytes(), folder_nbytes(folder))


def record_store(root: str | os.PathLike[str], path: str, record: StoreRecord,
                 storage_options: Mapping[str, Any] | None = None) -> None:
    """Add (or replace) the record of the store just placed at ``root/path``.

    A root without an index gets one, built from a listing of what is already there.
    """
    _update(os.fspath(root), dict(storage_options or {}), {path: record})


def write_index(root: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None
                ) -> Index:
    """Rebuild the index of ``root`` from what is there, and write it (replacing any)."""
    text, options = os.fspath(root), dict(storage_options or {})
    if not is_local(text):
        validate_storage_options(text, options)
        if isinstance(fsspec.core.url_to_fs(text, **options)[0], HTTPFileSystem):
            raise LocationError(f"cannot write an index to {text}: HTTP locations are read "
                                "only. Run `nest-data index` where the files are (the folder "
                                f"or bucket that is served) and publish {INDEX_FILE} with them")
    index = _scan(text, options)
    _update(text, options, {}, replace=index)
    logger.info("indexed %d stores under %s", len(index.stores), text)
    return index


def _scan(root: str, options: dict[str, Any]) -> Index:
    """An index of every store found under a listable root."""
    listed = list_stores(root, options)
    assert listed is not None  # write_index refused the unlistable roots
    paths = list(listed)
    bar = tqdm(total=len(paths), desc="indexing", unit="store",
               disable=not _config.show_progress())
    records: dict[str, StoreRecord] = {}
    with bar:
        if is_local(root):
            base = Path(local_path(root))
            for path in paths:
                records[path] = StoreRecord.of((base / path / "zarr.json").read_bytes(),
                                               listed[path])
                bar.update()
        else:
            fs, base_path = fsspec.core.url_to_fs(root, **options)
            for start in range(0, len(paths), 64):  # fetched concurrently, 64 at a time
                batch = paths[start:start + 64]
                raws = fs.cat([f"{join(base_path, p)}/zarr.json" for p in batch])
                for path in batch:
                    records[path] = StoreRecord.of(raws[f"{join(base_path, path)}/zarr.json"],
                                                   listed[path])
                bar.update(len(batch))
    return Index(records)


def _update(root: str, options: dict[str, Any], changes: Mapping[str, StoreRecord], *,
            replace: Index | None = None) -> None:
    """Apply ``changes`` to the index of ``root`` (or write ``replace`` instead), locked."""
    if is_local(root):
        base = Path(local_path(root))
        with local_lock(base):
            index = _merged(root, options, changes, replace)
            tmp = base / f".{INDEX_FILE}.{uuid.uuid4().hex}.tmp"
            tmp.write_bytes(index.to_bytes())
            os.replace(tmp, base / INDEX_FILE)
        return
    fs, base_path = fsspec.core.url_to_fs(root, **options)
    target = f"{base_path.rstrip('/')}/{INDEX_FILE}"
    for attempt in range(WRITE_TRIES):
        with remote_lock(fs, f"{base_path.rstrip('/')}/{LOCK_FILE}"):
            index = _merged(root, options, changes, replace)
            fs.pipe_file(target, index.to_bytes())
        back = read_index(root, options)
        if back is not None and set(index.stores if replace else changes) <= set(back.stores):
            return
        logger.warning("the index at %s lost a record to another writer (try %d); writing "
                       "it again", root, attempt + 1)
    raise IndexLockError(f"the index at {root} kept losing records to other writers after "
                         f"{WRITE_TRIES} tries; rebuild it once they are done: `nest-data "
                         f"index {root}`")


def _merged(root: str, options: dict[str, Any], changes: Mapping[str, StoreRecord],
            replace: Index | None) -> Index:
    """The index to write: ``replace``, or the current index (a fresh scan when the root has
    none or a damaged one) with ``changes`` applied.  A newer index version is never
    overwritten."""
    try:
        index = read_index(root, options)
    except IndexVersionError:
        raise
    except IndexFormatError as exc:
        if replace is None:
            logger.warning("%s; rebuilding it from a listing", exc)
        index = None
    if replace is not None:
        return replace
    if index is None:
        with _config.progress(False):  # a short listing, inside some other write
            index = _scan(root, options)
    index.stores.update(changes)
    return index
