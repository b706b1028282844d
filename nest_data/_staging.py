"""Placing stores atomically: a hidden staging folder, renamed into place when complete.

Every writer of stores in the package builds its store in a stage and commits it, so a
reader never sees half a store; an existing target is replaced only when it is a nest-data
store, never anything else.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import fsspec

from nest_data import _config
from nest_data._digest import file_digest
from nest_data._format import ATTR
from nest_data._index import STAGING_DIR, record_of, record_store, store_exists
from nest_data._urls import is_local, join, local_path
from nest_data.errors import NoSpaceError, TargetExistsError

logger = logging.getLogger("nest_data")

__all__ = ["STAGING_DIR", "check_replaceable", "clean_staging", "commit", "make_root",
           "no_space", "object_digests", "staging", "store_exists"]

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)

# --------------------------------------------------------------------------------------
# Paths and atomic commit (local file systems; remote targets come with remote support)
# --------------------------------------------------------------------------------------


def _staging_parent(root: str | os.PathLike[str]) -> Path:
    """Local folder where stores are built: inside a local root, else in the cache dir."""
    if is_local(root):
        return Path(local_path(root)) / STAGING_DIR
    return _config.cache_dir() / "staging"


@contextlib.contextmanager
def staging(root: str | os.PathLike[str], path: str) -> Iterator[Path]:
    """Yield a fresh local staging folder for one store; remove it when done or failed."""
    stage = _staging_parent(root) / f"{uuid.uuid4().hex}-{Path(path).name}"
    stage.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def commit(stage: Path, root: str | os.PathLike[str], path: str,
           storage_options: Mapping[str, Any] | None = None, *, last: str = "zarr.json"
           ) -> None:
    """Make a complete staging folder the folder at ``root/path``, never half-visible.

    Local roots: one rename (an older folder is moved aside first, then deleted).  Remote
    roots (no rename there): the old ``last`` file (the store's root ``zarr.json``) is
    deleted, which hides the old folder from readers; every other object is uploaded; the
    ``last`` file, whose presence makes the folder exist for readers, goes last.  A store
    (``last="zarr.json"``) is then recorded in the root's index
    (:func:`nest_data._index.record_store`); a weights folder is not.
    """
    record = record_of(stage) if last == "zarr.json" else None
    _place(stage, root, path, storage_options, last)
    if record is not None:
        record_store(root, path, record, storage_options)


def _place(stage: Path, root: str | os.PathLike[str], path: str,
           storage_options: Mapping[str, Any] | None, last: str) -> None:
    url = join(root, path)
    if is_local(url):
        final = Path(local_path(url))
        final.parent.mkdir(parents=True, exist_ok=True)
        old = None
        check_replaceable(root, path)
        if final.exists():
            old = _staging_parent(root) / f"{uuid.uuid4().hex}-old-{final.name}"
            os.replace(final, old)
        os.replace(stage, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return
    check_replaceable(root, path, storage_options)
    fs, base = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    if fs.exists(f"{base}/{last}"):
        fs.rm_file(f"{base}/{last}")
    files = sorted(p for p in stage.rglob("*") if p.is_file() and p != stage / last)
    if files:
        fs.put([str(p) for p in files],
               [f"{base}/{p.relative_to(stage).as_posix()}" for p in files])
    fs.put_file(str(stage / last), f"{base}/{last}")


@contextlib.contextmanager
def no_space(dest: str | os.PathLike[str], needs: int | None = None) -> Iterator[None]:
    """Turn "no space left on device" (or an exhausted quota) inside the block into a
    :class:`~nest_data.errors.NoSpaceError` naming ``dest`` and about how much the write needs.

    Writers place their output atomically, so when this error is raised nothing half-written
    is visible; the message says so.

    Examples
    --------
    >>> import errno
    >>> with no_space("/data/nest", needs=3 * 2**20):
    ...     raise OSError(errno.ENOSPC, "No space left on device")
    Traceback (most recent call last):
    nest_data.errors.NoSpaceError: no space left on /data/nest (needs about 3 MB) ...
    """
    try:
        yield
    except NoSpaceError:
        raise
    except OSError as exc:
        if exc.errno not in _NO_SPACE:
            raise
        need = f" (needs about {max(1, round(needs / 2**20))} MB)" if needs else ""
        error = NoSpaceError(f"no space left on {os.fspath(dest)}{need}; nothing half-written "
                             "was left there. Free some space, or write to another "
                             "destination, and run it again")
        error.errno = exc.errno
        raise error from exc


def make_root(root: str | os.PathLike[str]) -> None:
    """Create a local collection root (a remote one needs nothing); refuse a file or worse.

    Raises
    ------
    TargetExistsError
        ``root`` is a file, or a folder that cannot be created (a read-only or virtual file
        system such as ``/proc``).
    """
    text = os.fspath(root)
    if not is_local(text):
        return
    folder = Path(local_path(text))
    if folder.exists() and not folder.is_dir():
        raise TargetExistsError(f"the destination {folder} is a file, not a folder; give a "
                                "folder (it is created if missing) to hold the stores")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".nest-data-probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise TargetExistsError(f"cannot write in the destination {folder} ({exc}); give a "
                                "folder you can write to") from exc


def check_replaceable(root: str | os.PathLike[str], path: str,
                      storage_options: Mapping[str, Any] | None = None) -> None:
    """Raise unless ``root/path`` is free or holds a store or weights folder nest-data wrote.

    Whatever is there is about to be replaced; nest-data never deletes or overwrites anything
    it did not write (a user's folder or file, a foreign Zarr group).

    Raises
    ------
    TargetExistsError
        Something else is at ``root/path``; the message says what and how to proceed.
    """
    url = join(root, path)
    if is_local(url):
        final = Path(local_path(url))
        if final.exists() or final.is_symlink():
            _refuse_unless_ours(url, final.is_dir() and not final.is_symlink(),
                                lambda name: (final / name).read_bytes()
                                if (final / name).is_file() else None)
        return
    fs, base = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    if fs.exists(base):
        _refuse_unless_ours(url, fs.isdir(base), lambda name: fs.cat_file(f"{base}/{name}")
                            if fs.exists(f"{base}/{name}") else None)


def _refuse_unless_ours(url: str, is_dir: bool, read: Callable[[str], bytes | None]) -> None:
    if is_dir:
        for name, key in (("zarr.json", ATTR), ("model.json", "format")):
            try:
                raw = read(name)
                doc = json.loads(raw) if raw is not None else None
            except (OSError, ValueError):
                doc = None
            if not isinstance(doc, dict):
                continue
            if name == "zarr.json" and isinstance(doc.get("attributes"), dict) and (
                    key in doc["attributes"]):
                return
            if name == "model.json" and str(doc.get(key, "")).startswith("nest-data "):
                return
    what = "a folder that is not a nest-data store" if is_dir else "a file"
    raise TargetExistsError(
        f"{url} exists and is {what}; nest-data replaces only stores and weights folders it "
        "wrote itself and never deletes anything else. Move it away, or write to another "
        "destination.")


def clean_staging(root: str | os.PathLike[str]) -> int:
    """Remove staging folders left by interrupted writes under a local root; return how many."""
    if not is_local(root):
        return 0
    removed = 0
    for stage in Path(local_path(root)).rglob(STAGING_DIR):
        if stage.is_dir():
            removed += sum(1 for _ in stage.iterdir())
            shutil.rmtree(stage, ignore_errors=True)
    return removed


def object_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every object of a store folder except the metadata (``zarr.json``) files."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != "zarr.json":
            out[path.relative_to(folder).as_posix()] = (
                file_digest(path))
    return out
