"""Copying a chosen subset of a (remote) location to a local root, for offline work."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from nest_data import _config
from nest_data._catalog import Catalog, Entry
from nest_data._catalog import catalog as default_catalog
from nest_data._digest import bytes_digest, file_digest
from nest_data._format import ATTR
from nest_data._index import existing_paths, read_index
from nest_data._locks import writer_lock
from nest_data._parallel import run_jobs
from nest_data._staging import (
    STAGING_DIR,
    clean_staging,
    commit,
    is_no_space,
    make_root,
    no_space_error,
)
from nest_data._storage import NestStore, make_store
from nest_data._urls import is_local, local_path
from nest_data.errors import ChecksumError, NestDataError, StoreNotFoundError

logger = logging.getLogger("nest_data")

CONCURRENCY = 8  # objects in flight per store
_PARTIAL = re.compile(r"\..+\.[0-9a-f]{32}")  # an object being written: .<name>.<uuid>

__all__ = ["MirrorReport", "mirror"]


@dataclass
class MirrorReport:
    """What :func:`mirror` did: entries copied, already up to date, not at the source, failed."""

    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    bytes: int = 0
    absent: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"{len(self.copied)} copied ({self.bytes / 1e6:.1f} MB), {len(self.skipped)} "
                f"already up to date, {len(self.absent)} not at the source, "
                f"{len(self.failed)} failed")


@_config.progress_option
def mirror(
    dest: str | os.PathLike[str],
    *,
    location: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    workers: int = 2,
    show_progress: bool | None = None,
    catalog: Catalog | None = None,
    **keys: Any,
) -> MirrorReport:
    """Copy the entries matching ``keys`` from a location to a local root.

    Every object is checked against the SHA-256 recorded in its store as it arrives; a store
    appears under ``dest`` only when complete.  Rerunning resumes: complete, identical
    stores are skipped, and objects already downloaded for an unfinished store are kept.
    One writer at a time per ``dest`` (:func:`nest_data._locks.writer_lock`); a run removes
    the unfinished copies that earlier runs left for sources it does not copy now (a
    source moved, or a different subset), so nothing stale piles up in ``dest``.
    Use the copy with ``location=str(dest)`` (or add it to the catalog as a location).

    Parameters
    ----------
    dest : path
        Local root to copy into.
    location : str, optional
        Where to copy from (a location name or URL; default lookup as in
        :func:`nest_data.open`).
    storage_options : dict, optional
        fsspec options, merged over the location's own.
    workers : int
        Entries copied at once (each also fetches several objects at once).
    show_progress : bool, optional
        Progress bar over entries.
    **keys
        Catalog search keys (scalars or lists): ``modality, imageset, subject, roi``...

    Returns
    -------
    MirrorReport
        Entries ``copied``, ``skipped`` (already up to date), ``absent`` (matching, but not
        at the location) and ``failed``.

    Raises
    ------
    StoreNotFoundError
        No catalog entry matches ``keys``, or none of those that match is at the location.
    NoSpaceError
        ``dest`` ran out of space; the entries that fit are copied, nothing half-written is
        visible, and a rerun resumes with the objects already fetched.
    WriterLockError
        Another process is writing to ``dest``; the message names it.
    NestDataError
        Some entries could not be copied (the message names each and why).

    Examples
    --------
    >>> import nest_data, tempfile
    >>> report = nest_data.mirror(tempfile.mkdtemp(), location="demo", imageset="things",
    ...                           subject=1, roi=["V1", "FFA-1"], model="fwrf",
    ...                           show_progress=False)
    >>> print(report.copied)
    ['fmri/nsd/fwrf things sub-01 FFA-1', 'fmri/nsd/fwrf things sub-01 V1']
    """
    if not is_local(dest):
        raise NestDataError(f"mirror copies to a local folder; {dest!r} is a URL. To publish "
                            "to a bucket, use `nest-data convert ... DEST` with a remote DEST")
    cat = catalog or default_catalog()
    root = cat.location(location, storage_options)
    # A surface model's ROIs share their subject's one store: copy each store once.
    entries = list({e.path: e for e in cat.at(root).search(**keys)}.values())
    if not entries:
        raise StoreNotFoundError(f"no catalog entries match {keys}")
    present = existing_paths(root.url, root.storage_options, candidates=[e.path for e in entries])
    report = MirrorReport(absent=sorted(e.label for e in entries if e.path not in present))
    entries = [e for e in entries if e.path in present]
    if not entries:
        raise StoreNotFoundError(f"none of the {len(report.absent)} entries matching {keys} is "
                                 f"at {root.url}; `nest-data catalog --location {root.url}` "
                                 "lists what is there")
    if report.absent:
        logger.info("%d matching entries are not at %s: %s", len(report.absent), root.url,
                    ", ".join(report.absent))
    jobs = [(entry, root.store(entry), dict(root.storage_options), local_path(os.fspath(dest)))
            for entry in entries]
    make_root(dest)
    full: list[Entry] = []  # entries that failed for want of space
    with writer_lock(dest, "mirror"):
        clean_staging(dest, jobs="mirror", keep={_stage_name(job[1]) for job in jobs})
        for job, outcome in run_jobs(_mirror_entry, jobs, workers=workers,
                                     desc="mirroring", unit="entry"):
            label = job[0].label
            if isinstance(outcome, BaseException):
                if is_no_space(outcome):
                    full.append(job[0])
                report.failed[label] = str(outcome)
                logger.error("mirroring %s failed: %s", label, outcome)
            elif outcome is None:
                report.skipped.append(label)
            else:
                report.copied.append(label)
                report.bytes += outcome
    report.copied.sort()
    report.skipped.sort()
    if full:
        others = len(report.failed) - len(full)
        raise no_space_error(dest, needs=_nbytes(root.url, root.storage_options, full),
                             done=f"{len(report.copied)} of {len(jobs)} entries copied, "
                                  f"{len(report.skipped)} already up to date"
                                  + (f", {others} failed otherwise (logged)" if others else ""))
    if report.failed:
        listing = "\n  ".join(f"{k}: {v}" for k, v in sorted(report.failed.items()))
        raise NestDataError(f"{len(report.failed)} of {len(jobs)} entries could not be mirrored "
                            f"({report}):\n  {listing}\nRerun the same command to resume.")
    return report


def _mirror_entry(job: tuple[Entry, str, dict[str, Any], str]) -> int | None:
    """Copy one store; return the bytes fetched, or None when the copy was up to date."""
    entry, url, options, dest = job
    source = make_store(url, options)
    root_meta = sync(_get(source, "zarr.json"))
    if root_meta is None:
        raise StoreNotFoundError(f"no store for {entry.label} at {url}")
    doc = json.loads(root_meta)
    objects: dict[str, str] = doc.get("attributes", {}).get(ATTR, {}).get("objects", {})
    if not objects:
        raise StoreNotFoundError(f"{url} is not a complete nest-data store (no object manifest)")
    final = Path(dest) / entry.path
    if (final / "zarr.json").is_file() and (final / "zarr.json").read_bytes() == root_meta and \
            all(_matches(final / key, digest) for key, digest in objects.items()):
        return None
    stage = Path(dest) / STAGING_DIR / _stage_name(url)
    metadata = [f"{path}/zarr.json" for path in doc.get("consolidated_metadata", {})
                .get("metadata", {})]
    fetched = sync(_fetch_all(source, stage, objects, metadata))
    (stage / "zarr.json").write_bytes(root_meta)
    commit(stage, dest, entry.path)
    logger.info("mirrored %s (%d bytes fetched)", entry.label, fetched)
    return fetched


def _stage_name(url: str) -> str:
    """The staging folder of a source store: a fixed name, so an interrupted copy resumes."""
    return "mirror-" + hashlib.sha256(url.encode()).hexdigest()[:16]


def _nbytes(root: str, options: Mapping[str, Any], entries: list[Entry]) -> int | None:
    """Bytes of the stores of ``entries`` at ``root``, from its index; None if unknown."""
    with contextlib.suppress(NestDataError, OSError):
        index = read_index(root, options)
        if index is not None:
            return sum(index.stores[e.path].nbytes for e in entries if e.path in index.stores)
    return None


def _matches(path: Path, digest: str) -> bool:
    try:
        return file_digest(path) == digest
    except FileNotFoundError:
        return False


async def _get(store: NestStore, key: str) -> bytes | None:
    buffer = await store.get(key, default_buffer_prototype())
    return None if buffer is None else buffer.to_bytes()


async def _fetch_all(store: NestStore, stage: Path, objects: Mapping[str, str],
                     metadata: list[str]) -> int:
    """Fetch every object into ``stage`` (keeping those an earlier run fetched); return the
    bytes fetched.  Every fetch ends before this returns, and the first error (a full disk
    first) is raised then: no fetch is left running, or failing, after it."""
    semaphore = asyncio.Semaphore(CONCURRENCY)
    if stage.is_dir():  # objects that a killed run was writing
        for partial in stage.rglob(".*"):
            if _PARTIAL.fullmatch(partial.name) and partial.is_file():
                partial.unlink()

    async def fetch(key: str, digest: str | None) -> int:
        target = stage / key
        if digest is not None and _matches(target, digest):
            return 0  # downloaded by an earlier, interrupted run
        async with semaphore:
            data = await _get(store, key)
        if data is None:
            raise StoreNotFoundError(f"{store.url}/{key} is listed in the store's manifest but "
                                     "missing; the source store is damaged")
        if digest is not None:
            got = bytes_digest(data)
            if got != digest:
                raise ChecksumError(f"{store.url}/{key} has checksum {got}, recorded {digest}: "
                                    "the source store was modified; nothing was written for "
                                    "this entry")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
        try:
            tmp.write_bytes(data)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, target)
        return len(data)

    outcomes = await asyncio.gather(*(fetch(k, d) for k, d in objects.items()),
                                    *(fetch(k, None) for k in metadata), return_exceptions=True)
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    if errors:
        raise next((e for e in errors if is_no_space(e)), errors[0])
    return int(sum(o for o in outcomes if isinstance(o, int)))

