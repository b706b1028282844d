"""Checking a whole collection against the checksums recorded in its stores."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from tqdm.auto import tqdm
from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore

from nest_data import _config
from nest_data._catalog import Catalog
from nest_data._catalog import catalog as default_catalog
from nest_data._digest import bytes_digest
from nest_data._format import (
    DATA_VAR,
    array_digest,
    consolidated_of,
    root_document,
    store_attrs,
)
from nest_data._index import (
    INDEX_FILE,
    Index,
    find_stores,
    list_stores,
    probe_stores,
    read_index,
    read_object,
    record_mismatches,
    write_index,
)
from nest_data._metadata import check_metadata, node_digest
from nest_data._storage import make_store, quiet_consolidated
from nest_data._urls import is_local, join, validate_storage_options
from nest_data.errors import IndexFormatError, StoreFormatError, StoreNotFoundError

logger = logging.getLogger("nest_data")

__all__ = ["Problem", "VerifyReport", "build_index", "find_stores", "verify", "verify_store"]


@dataclass
class VerifyReport:
    """What :func:`verify` found: how many stores it checked and every mismatch."""

    stores: int
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        """True when every object and array matches its checksum."""
        return not self.problems


@_config.progress_option
def verify(
    root: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    show_progress: bool | None = None,
    catalog: Catalog | None = None,
) -> VerifyReport:
    """Re-check every object and array of every store under ``root`` against its checksums,
    and the location's index (``nest-data-index.json``) against the stores.

    Parameters
    ----------
    root : str, path or URL
        A location name (``"demo"``, ``"local"``, one in the catalog) or the root of a
        collection (the DEST of ``nest-data convert``, a mirror, a bucket prefix).
        Local roots and listable remote roots (S3, GCS, ...) are searched for stores,
        including ones outside the catalog (``nest-data generate``); HTTP roots, which cannot
        be listed, are checked at every catalog path.
    storage_options : dict, optional
        fsspec options for a remote root.
    show_progress : bool, optional
        Progress bar over stores.

    Returns
    -------
    VerifyReport
        The number of stores checked and each mismatch, naming the store, the array and the
        object (chunk); and, where the root has an index, each store missing from it, each
        record whose store is gone, each metadata checksum or format version that differs
        (the fix, ``nest-data index ROOT``, is in the message).  A root without an index is
        checked as before.

    Examples
    --------
    >>> import nest_data
    >>> from nest_data._demo import demo_root
    >>> report = nest_data.verify(demo_root() / "modality-eeg", show_progress=False)
    >>> report.ok, report.stores
    (True, 30)
    """
    cat = catalog or default_catalog()
    where = cat.location(root, storage_options)
    options = dict(where.storage_options)
    root_text = where.url
    if not is_local(root_text):
        validate_storage_options(root_text, options)
    problems: list[Problem] = []
    fix = f"run `nest-data index {root_text}`"
    try:
        index = read_index(root_text, options)
    except IndexFormatError as exc:
        index = None
        problems.append(Problem(INDEX_FILE, "index", str(exc)))
    listed = list_stores(root_text, options)
    labels = sorted(listed) if listed is not None else sorted(probe_stores(  # HTTP: probe
        root_text, options, [*(e.path for e in cat), *(index.stores if index else ())]))
    if not labels and not (index is not None and index.stores):
        raise StoreNotFoundError(f"no nest-data stores under {root_text}; give the root of a "
                                 "collection written by `nest-data convert` or `nest-data demo`")
    if index is None:
        logger.info("%s has no index %s; `nest-data index %s` writes one", root_text,
                    INDEX_FILE, root_text)
    for label in tqdm(labels, desc="verifying", unit="store",
                      disable=not _config.show_progress()):
        store = make_store(join(root_text, label), options)
        problems.extend(verify_store(store, label=label))
        if index is None:
            continue
        record = index.stores.get(label)
        if record is None:
            problems.append(Problem(label, "index", f"is missing from {INDEX_FILE}; {fix}"))
            continue
        metadata = read_object(join(root_text, label), options, "zarr.json")
        if metadata is not None:  # else removed since listed: verify_store said so
            problems.extend(Problem(label, "index", f"{detail}; {fix}") for detail in
                            record_mismatches(record, metadata))
    for gone in sorted(set(index.stores if index is not None else ()) - set(labels)):
        problems.append(Problem(gone, "index", f"is recorded in {INDEX_FILE} but no store is "
                                f"there; {fix}"))
    logger.info("verified %d stores under %s: %d problem(s)", len(labels), root_text,
                len(problems))
    return VerifyReport(len(labels), problems)


@_config.progress_option
def build_index(
    root: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    show_progress: bool | None = None,
    catalog: Catalog | None = None,
) -> Index:
    """Rebuild the index of a location (``nest-data-index.json``) from the stores there.

    Every writer keeps the index up to date; rebuild it for a root written before nest-data
    kept one, or when :func:`verify` says it is out of date.  The stores are listed (a local
    walk, one listing of a bucket) and each one's root ``zarr.json`` is read.

    Parameters
    ----------
    root : str, path or URL
        A location name or the root of a collection (a folder, ``s3://``, ``gs://``...).
        HTTP locations cannot be written: index the folder or bucket that is served.
    storage_options : dict, optional
        fsspec options for a remote root.
    show_progress : bool, optional
        Progress bar over stores.

    Returns
    -------
    Index
        The index written: ``index.stores`` maps each store's path to its keys, bytes,
        format version and metadata checksum.

    Examples
    --------
    >>> import nest_data, shutil, tempfile
    >>> from nest_data._demo import demo_root
    >>> copy = shutil.copytree(demo_root() / "modality-eeg", tempfile.mkdtemp() + "/eeg")
    >>> index = nest_data.build_index(copy, show_progress=False)
    >>> len(index.stores), nest_data.verify(copy, show_progress=False).ok
    (30, True)
    """
    cat = catalog or default_catalog()
    where = cat.location(root, storage_options)
    return write_index(where.url, where.storage_options)


@dataclass
class Problem:
    """One mismatch: a checksum (:func:`verify_store`), or the location's index
    (``array="index"``: a store missing from it, a record whose store is gone, a metadata
    checksum or format version that differs, or an index that cannot be read)."""

    store: str
    array: str
    detail: str

    def __str__(self) -> str:
        return f"{self.store}: {self.array}: {self.detail}"


def verify_store(store: Any, *, label: str | None = None) -> list[Problem]:
    """Re-read a store and compare it with the checksums recorded when it was written.

    Every object (chunk) is checked against its SHA-256, and every array whose objects all
    match is decoded and checked against the SHA-256 of its values.

    Parameters
    ----------
    store : zarr store or path
        The entry's store.
    label : str, optional
        How to name the store in problems (defaults to ``str(store)``).

    Returns
    -------
    list of Problem
        Empty when every object and array matches; otherwise one per mismatch, naming the
        object (e.g. ``responses/c/3/0``, images 807-1075) or the array.
    """
    name = label or str(store)
    if not isinstance(store, Store):
        store = LocalStore(os.fspath(store), read_only=True)
    raw = sync(store.get("zarr.json", default_buffer_prototype()))
    doc = root_document(None if raw is None else raw.to_bytes(), store)
    meta = store_attrs(doc)
    problems = sync(_metadata_problems(store, name, meta, consolidated_of(doc)))
    metadata_damaged = bool(problems)
    if metadata_damaged and not isinstance(meta.get("objects"), Mapping):
        return problems
    rows = int(meta.get("chunk_rows", 0))
    n_images = _n_images(consolidated_of(doc))
    damaged: set[str] = set()
    for key, got in sync(_object_digests(store, list(meta["objects"]))).items():
        recorded = meta["objects"][key]
        if got == recorded:
            continue
        array = key.split("/c/", 1)[0] if "/c/" in key else key.rsplit("/c", 1)[0]
        damaged.add(array)
        where = ""
        if array == DATA_VAR and rows:
            start = int(key.split("/c/", 1)[1].split("/")[0]) * rows
            where = f" (images {start}-{min(start + rows, n_images) - 1})"
        detail = "is missing" if got is None else f"has checksum {got}, recorded {recorded}"
        problems.append(Problem(name, array, f"object {key}{where} {detail}"))
    if metadata_damaged:
        return problems  # values decoded by damaged metadata would mean nothing
    with quiet_consolidated():
        group = zarr.open_group(store, mode="r", zarr_format=3)
    for array_name, expected in meta["checksums"].items():
        if array_name in damaged:
            continue
        try:
            got_values = array_digest(np.asarray(group[array_name][...]))  # type: ignore[index]
        except Exception as exc:  # undecodable bytes, missing array
            problems.append(Problem(name, array_name, f"cannot be read ({exc})"))
            continue
        if got_values != expected:
            problems.append(Problem(name, array_name,
                                    f"values checksum {got_values} != recorded {expected}"))
    return problems


def _n_images(nodes: Mapping[str, Any]) -> int:
    try:
        return int(nodes[DATA_VAR]["shape"][0])
    except (KeyError, IndexError, TypeError, ValueError):
        return 0


async def _metadata_problems(store: Store, name: str, attrs: Mapping[str, Any],
                             nodes: Mapping[str, Any]) -> list[Problem]:
    """The metadata checks of every open (:func:`~nest_data._metadata.check_metadata`),
    and every node's own ``zarr.json`` (what other Zarr readers read) against the
    consolidated copy that nest-data reads."""
    problems = []
    try:
        check_metadata(attrs, nodes, name)
    except StoreFormatError as exc:
        problems.append(Problem(name, "zarr.json", str(exc)))
    paths = sorted(nodes)
    prototype = default_buffer_prototype()
    own = await asyncio.gather(*(store.get(f"{path}/zarr.json", prototype) for path in paths))
    for path, buffer in zip(paths, own, strict=True):
        if buffer is None:
            problems.append(Problem(name, path, f"its metadata {path}/zarr.json is missing"))
            continue
        try:
            same = node_digest(json.loads(buffer.to_bytes())) == node_digest(nodes[path])
        except (ValueError, AttributeError):
            same = False
        if not same:
            problems.append(Problem(name, path, f"its metadata {path}/zarr.json differs from "
                                    "the consolidated copy in the store's root zarr.json"))
    return problems


async def _object_digests(store: Store, keys: list[str]) -> dict[str, str | None]:
    """SHA-256 of the raw bytes of each object (None when missing), read concurrently."""
    prototype = default_buffer_prototype()
    semaphore = asyncio.Semaphore(16)

    async def one(key: str) -> str | None:
        async with semaphore:
            buffer = await store.get(key, prototype)
        return None if buffer is None else (
            bytes_digest(buffer.to_bytes()))

    return dict(zip(keys, await asyncio.gather(*(one(k) for k in keys)), strict=True))
