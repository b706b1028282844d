"""Checking a whole collection against the checksums recorded in its stores."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.http import HTTPFileSystem
from tqdm.auto import tqdm

from nest_data import _config
from nest_data._catalog import Catalog
from nest_data._catalog import catalog as default_catalog
from nest_data._storage import (
    is_local,
    join,
    local_path,
    make_store,
    validate_storage_options,
)
from nest_data._store import ATTR, STAGING_DIR, Problem, store_exists, verify_store
from nest_data.errors import RemoteReadError, StoreNotFoundError

logger = logging.getLogger("nest_data")

__all__ = ["VerifyReport", "find_stores", "verify"]


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


@dataclass
class VerifyReport:
    """What :func:`verify` found: how many stores it checked and every mismatch."""

    stores: int
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        """True when every object and array matches its checksum."""
        return not self.problems


def verify(
    root: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    show_progress: bool | None = None,
    catalog: Catalog | None = None,
) -> VerifyReport:
    """Re-check every object and array of every store under ``root`` against its checksums.

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
        object (chunk).

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
    labels: list[str]
    if is_local(root_text):
        base = Path(local_path(root_text))
        labels = [str(p.relative_to(base)) for p in find_stores(base)]
    else:
        validate_storage_options(root_text, options)
        listed = _remote_stores(root_text, options)
        if listed is None:  # no listing (HTTP): probe every catalog path
            paths = dict.fromkeys(e.path for e in cat)  # surface ROIs share one store
            listed = [p for p in paths if store_exists(root_text, p, options)]
        labels = listed
    if not labels:
        raise StoreNotFoundError(f"no nest-data stores under {root_text}; give the root of a "
                                 "collection written by `nest-data convert` or `nest-data demo`")
    problems: list[Problem] = []
    for label in tqdm(labels, desc="verifying", unit="store",
                      disable=not _config.show_progress(show_progress)):
        store = make_store(join(root_text, label), options)
        problems.extend(verify_store(store, label=label))
    logger.info("verified %d stores under %s: %d problem(s)", len(labels), root_text,
                len(problems))
    return VerifyReport(len(labels), problems)


def _remote_stores(root: str, options: Mapping[str, Any]) -> list[str] | None:
    """Relative paths of the stores (``*.zarr`` with a root ``zarr.json``) under a remote root.

    None when the file system cannot list (HTTP).  Staging folders are skipped.
    """
    fs, base = fsspec.core.url_to_fs(root, **dict(options))
    if isinstance(fs, HTTPFileSystem):
        try:  # fs.info turns a refused connection into FileNotFoundError: ask for the bytes
            fs.cat_file(base)
        except FileNotFoundError:
            pass  # the server answered: a root without an index page is normal
        except Exception as exc:
            raise RemoteReadError(f"cannot reach {root} ({type(exc).__name__}: {exc}); check "
                                  "the URL, that the server runs, and your network") from exc
        return None
    base = base.rstrip("/")
    found = []
    for path in fs.find(base):
        rel = path[len(base):].strip("/")
        if rel.endswith(".zarr/zarr.json") and STAGING_DIR not in rel:
            found.append(rel.removesuffix("/zarr.json"))
    return sorted(found)
