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
import re
import shutil
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
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

__all__ = ["STAGE_MARKER", "STAGING_DIR", "check_replaceable", "clean_staging", "commit",
           "is_no_space", "make_root", "no_space", "no_space_error", "object_digests",
           "staging", "store_exists"]

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
#: Marks a folder made by :func:`staging` (removed before the folder is committed).
STAGE_MARKER = ".nest-data-stage"
_STAGE_NAME = re.compile(r"[0-9a-f]{32}-.+")  # staging() and commit()'s moved-aside folders
# resumable jobs: generate-<job>-<store name>[.progress], mirror-<source>
_JOB_NAME = re.compile(r"(generate|mirror)-[0-9a-f]{16}(-.+)?")
# what a weights folder holds (nest_data.encoders.weights' MODEL_FILE and WEIGHTS_FILE)
_WEIGHTS_FILES = ("model.json", "weights.safetensors")
_LISTED = 10  # foreign files named in a refusal

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
    """Yield a fresh local staging folder for one store; remove it when done or failed.

    The folder is named ``<uuid>-<store name>`` and holds the marker file
    :data:`STAGE_MARKER` until :func:`commit` places it, so that :func:`clean_staging` can
    tell a stage left by a killed writer from anything else.
    """
    stage = _staging_parent(root) / f"{uuid.uuid4().hex}-{Path(path).name}"
    try:
        stage.mkdir(parents=True)
        (stage / STAGE_MARKER).write_bytes(b"")
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
    (stage / STAGE_MARKER).unlink(missing_ok=True)
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


def is_no_space(exc: BaseException) -> bool:
    """Whether ``exc`` says a write ran out of space or quota (``ENOSPC``, ``EDQUOT``)."""
    return isinstance(exc, NoSpaceError) or (isinstance(exc, OSError)
                                             and exc.errno in _NO_SPACE)


def no_space_error(dest: str | os.PathLike[str], needs: int | None = None, done: str = ""
                   ) -> NoSpaceError:
    """The :class:`~nest_data.errors.NoSpaceError` of a writer into ``dest``.

    ``needs`` is about how many bytes the write needs, ``done`` what was finished (``"2 of
    4 entries converted"``), both quoted in the message when given.  For a remote ``dest``
    the message names the local folder where its stores are built, which is what filled.

    Examples
    --------
    >>> print(no_space_error("/data/nest", needs=5 * 2**20, done="1 of 3 entries copied"))
    no space left on /data/nest (needs about 5 MB; 1 of 3 entries copied); nothing \
half-written is visible there. Free some space (or write to another destination) and run the \
same command again: finished work is kept.
    """
    text = os.fspath(dest)
    where = text if is_local(text) else (f"{_staging_parent(text)} (where the stores for "
                                         f"{text} are built)")
    notes = [f"needs about {max(1, round(needs / 2**20))} MB"] if needs else []
    notes += [done] if done else []
    note = f" ({'; '.join(notes)})" if notes else ""
    return NoSpaceError(f"no space left on {where}{note}; nothing half-written is "
                        "visible there. Free some space (or write to another destination) "
                        "and run the same command again: finished work is kept.")


@contextlib.contextmanager
def no_space(dest: str | os.PathLike[str], needs: int | None = None) -> Iterator[None]:
    """Turn "no space left on device" (or an exhausted quota) inside the block into a
    :class:`~nest_data.errors.NoSpaceError` naming ``dest`` and about how much the write needs.

    Writers place their output atomically, so when this error is raised nothing half-written
    is visible; the message says so.

    Examples
    --------
    >>> import errno
    >>> try:
    ...     with no_space("/data/nest", needs=3 * 2**20):
    ...         raise OSError(errno.ENOSPC, "No space left on device")
    ... except NoSpaceError as exc:
    ...     print(str(exc)[:46], exc.errno == errno.ENOSPC)
    no space left on /data/nest (needs about 3 MB) True
    """
    try:
        yield
    except NoSpaceError:
        raise
    except OSError as exc:
        if not is_no_space(exc):
            raise
        error = no_space_error(dest, needs)
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
        if is_no_space(exc):
            raise no_space_error(folder) from exc
        raise TargetExistsError(f"cannot write in the destination {folder} ({exc}); give a "
                                "folder you can write to") from exc


def check_replaceable(root: str | os.PathLike[str], path: str,
                      storage_options: Mapping[str, Any] | None = None) -> None:
    """Raise unless ``root/path`` is free or holds only what nest-data wrote there.

    Whatever is there is about to be replaced; nest-data never deletes or overwrites anything
    it did not write: a user's folder or file, a foreign Zarr group, or a file a user put
    inside a store or weights folder (``NOTES.txt``, ``analysis/``).  Such files are not
    kept aside and moved into the new folder: they may sit among a store's chunks, which
    the new store replaces, so the writer refuses and lets the user move them.  What a
    store wrote is its root and node ``zarr.json`` files and the objects of its manifest; a
    store without a manifest (written before manifests existed) is taken as all ours.

    Raises
    ------
    TargetExistsError
        Something else is at ``root/path``, or inside it; the message lists it and says
        how to proceed.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> check_replaceable(root, "free.zarr")  # nothing there
    >>> (root / "mine.zarr").mkdir()
    >>> (root / "mine.zarr" / "NOTES.txt").write_text("my notes")
    8
    >>> check_replaceable(root, "mine.zarr")
    Traceback (most recent call last):
    ...
    nest_data.errors.TargetExistsError: /tmp/.../mine.zarr exists and is a folder that is not ...
    """
    url = join(root, path)
    if is_local(url):
        final = Path(local_path(url))
        if final.exists() or final.is_symlink():
            _refuse_unless_ours(url, final.is_dir() and not final.is_symlink(),
                                lambda name: (final / name).read_bytes()
                                if (final / name).is_file() else None,
                                lambda: _local_listing(final))
        return
    fs, base = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    if fs.exists(base):
        _refuse_unless_ours(url, fs.isdir(base), lambda name: fs.cat_file(f"{base}/{name}")
                            if fs.exists(f"{base}/{name}") else None,
                            lambda: [p[len(base.rstrip("/")) + 1:] for p in fs.find(base)])


def _refuse_unless_ours(url: str, is_dir: bool, read: Callable[[str], bytes | None],
                        listing: Callable[[], list[str]]) -> None:
    written = _written_by_us(read) if is_dir else None
    if written is None:
        what = "a folder that is not a nest-data store" if is_dir else "a file"
        raise TargetExistsError(
            f"{url} exists and is {what}; nest-data replaces only stores and weights folders "
            "it wrote itself and never deletes anything else. Move it away, or write to "
            "another destination.")
    foreign = sorted(rel for rel in listing() if not written(rel))
    if foreign:
        named = ", ".join(foreign[:_LISTED]) + (f" and {len(foreign) - _LISTED} more"
                                                if len(foreign) > _LISTED else "")
        raise TargetExistsError(
            f"{url} is a folder nest-data wrote, but it also holds {len(foreign)} file(s) or "
            f"folder(s) nest-data did not write: {named}. nest-data replaces only what it "
            "wrote and never deletes anything else: move them out of that folder, then run "
            "this again.")


def _written_by_us(read: Callable[[str], bytes | None]) -> Callable[[str], bool] | None:
    """Which paths (relative to a folder) nest-data wrote there; None if not its folder."""
    for name in ("zarr.json", "model.json"):
        try:
            raw = read(name)
            doc = json.loads(raw) if raw is not None else None
        except (OSError, ValueError):
            doc = None
        if not isinstance(doc, dict):
            continue
        attrs = doc.get("attributes")
        if name == "zarr.json" and isinstance(attrs, dict) and isinstance(attrs.get(ATTR),
                                                                           dict):
            objects = attrs[ATTR].get("objects")
            if not isinstance(objects, dict):
                return lambda rel: True
            nodes = {"", *(doc.get("consolidated_metadata") or {}).get("metadata", {})}
            return lambda rel: rel in objects or (
                rel.rpartition("/")[2] == "zarr.json" and rel.rpartition("/")[0] in nodes)
        if name == "model.json" and str(doc.get("format", "")).startswith("nest-data "):
            return lambda rel: rel in _WEIGHTS_FILES
    return None


def _local_listing(folder: Path) -> list[str]:
    """Files (and empty folders, with a trailing ``/``) under ``folder``, relative to it."""
    out = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder).as_posix()
        if path.is_dir() and not path.is_symlink():
            if not any(path.iterdir()):
                out.append(rel + "/")
        else:
            out.append(rel)
    return out


def clean_staging(root: str | os.PathLike[str], *, jobs: str | None = None,
                  keep: Collection[str] = ()) -> int:
    """Remove what interrupted writers left in a local root's staging folder; return how many.

    Call it only while holding the root's writer lock
    (:func:`nest_data._locks.writer_lock`): it cannot tell a stage a live writer is filling
    from one left by a killed writer.  Removed: the folders :func:`staging` made (named
    ``<uuid>-<store name>``, holding :data:`STAGE_MARKER`) and stores or weights folders
    :func:`commit` moved aside.  Kept: the resumable job folders of ``generate``
    (``generate-<job>-<name>``) and ``mirror`` (``mirror-<source>``), except those of the
    kind ``jobs`` (``"generate"`` or ``"mirror"``) whose names are not in ``keep``; and
    whatever nest-data did not make there, with a warning naming it.  Only the staging
    folder of ``root`` itself is cleaned, not those of roots nested inside it (each has its
    own writers and lock).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> with staging(root, "a.zarr") as stage:
    ...     clean_staging(root)  # as a later writer would after this one was killed
    1
    >>> (root / STAGING_DIR / "my-notes.txt").write_text("mine")
    4
    >>> clean_staging(root), (root / STAGING_DIR / "my-notes.txt").read_text()
    (0, 'mine')
    """
    if not is_local(root):
        return 0
    parent = Path(local_path(root)) / STAGING_DIR
    if not parent.is_dir():
        return 0
    removed = 0
    for item in sorted(parent.iterdir()):
        kind = _staged_kind(item)
        if kind == "stage" or (kind is not None and kind == jobs and item.name not in keep):
            shutil.rmtree(item, ignore_errors=True)
            removed += 1
        elif kind is None:
            logger.warning("%s was not made by nest-data: it is left where it is; move it out "
                           "of %s, which holds the unfinished writes of nest-data", item, parent)
    return removed


def _staged_kind(item: Path) -> str | None:
    """``"stage"``, ``"generate"`` or ``"mirror"`` for a folder nest-data staged; else None."""
    if not item.is_dir() or item.is_symlink():
        return None
    if _STAGE_NAME.fullmatch(item.name) and any(
            (item / name).is_file() for name in (STAGE_MARKER, "zarr.json", _WEIGHTS_FILES[0])):
        return "stage"
    job = _JOB_NAME.fullmatch(item.name)
    return job.group(1) if job else None


def object_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every object of a store folder except the metadata (``zarr.json``) files."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name not in ("zarr.json", STAGE_MARKER):
            out[path.relative_to(folder).as_posix()] = (
                file_digest(path))
    return out
