"""Checking a whole collection against the checksums recorded in its stores."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from tqdm.auto import tqdm

from nest_data import _config
from nest_data._store import ATTR, STAGING_DIR, Problem, verify_store
from nest_data.errors import StoreNotFoundError

logger = logging.getLogger("nest_data")

__all__ = ["find_stores", "verify"]


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


def verify(root: str | os.PathLike[str], *, show_progress: bool | None = None) -> list[Problem]:
    """Re-check every array and chunk of every store under ``root`` against its checksums.

    Parameters
    ----------
    root : path
        Root of a collection (for example the DEST of ``nest-data convert``).
    show_progress : bool, optional
        Progress bar over stores.

    Returns
    -------
    list of Problem
        Each mismatch, naming the store, the array and the chunk; empty when all is well.

    Examples
    --------
    >>> import nest_data
    >>> from nest_data._demo import demo_root
    >>> nest_data.verify(demo_root() / "modality-eeg", show_progress=False)
    []
    """
    stores = find_stores(root)
    if not stores:
        raise StoreNotFoundError(f"no nest-data stores under {root}; give the root of a "
                                 "collection written by `nest-data convert` or `nest-data demo`")
    problems: list[Problem] = []
    for store in tqdm(stores, desc="verifying", unit="store",
                      disable=not _config.show_progress(show_progress)):
        problems.extend(verify_store(store, label=str(Path(store).relative_to(root))))
    logger.info("verified %d stores under %s: %d problem(s)", len(stores), root, len(problems))
    return problems
