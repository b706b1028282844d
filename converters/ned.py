"""Converting NED's pre-generated in silico responses (HDF5 + pickled .npy) to Zarr stores."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nest_data import _config
from nest_data._catalog import Catalog
from nest_data._catalog import catalog as default_catalog
from nest_data._locks import writer_lock
from nest_data._parallel import run_jobs
from nest_data._staging import clean_staging, is_no_space, make_root, no_space_error
from nest_data._storage import make_store
from nest_data._urls import is_local, validate_storage_options
from nest_data.converters.ned_entry import DATASET, SourceEntry, convert_entry
from nest_data.errors import (
    ConversionError,
    NestDataError,
    SourceFormatError,
)
from nest_data.synthetic import NED_ROOT_NAMES

logger = logging.getLogger("nest_data")

_FOLDER_RE = re.compile(
    r"^modality-(?P<modality>[^/]+)/train_dataset-(?P<train_dataset>[^/]+)/model-(?P<model>[^/]+)"
    r"/imageset-(?P<imageset>[^/]+)$"
)
# NED's file names since 2024-05-26, and before (NED commit cbedc74 renamed them).
_NAME_RE = re.compile(r"^synthetic_neural_responses_sub-(?P<subject>\d+)(?:_roi-(?P<roi>.+))?\.h5$")
_OLD_NAME_RE = re.compile(
    r"^synthetic_neural_responses_training_dataset-(?P<train_dataset>.+?)_model-(?P<model>.+?)"
    r"_imageset-(?P<imageset>.+?)_sub-(?P<subject>\d+)(?:_roi-(?P<roi>.+))?\.h5$"
)

__all__ = ["ConversionReport", "SourceEntry", "convert_ned", "discover_ned"]


@dataclass
class ConversionReport:
    """What :func:`convert_ned` did: entries converted, skipped (already complete), failed.

    Entries are listed by label, in sorted order.
    """

    converted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return (f"{len(self.converted)} converted, {len(self.skipped)} already complete, "
                f"{len(self.failed)} failed")


def discover_ned(
    src: str | os.PathLike[str], *, catalog: Catalog | None = None, **keys: Any
) -> list[SourceEntry]:
    """Find the entries of a NED folder, optionally filtered by catalog keys.

    ``src`` may be the folder that holds ``pregenerated_insilico_neural_responses/`` or
    ``synthetic_neural_responses/`` (NED used both names), or one of those folders itself.
    Files keep NED's current names (``synthetic_neural_responses_sub-01_roi-V1.h5``) or the
    names NED gave them before 2024-05-26
    (``synthetic_neural_responses_training_dataset-nsd_model-fwrf_imageset-nsd_sub-01_roi-V1.h5``,
    metadata ``synthetic_neural_responses_metadata_training_dataset-...npy``).

    Parameters
    ----------
    src : path
        The NED folder.
    catalog : Catalog, optional
        Catalog that validates keys and gives store paths.
    **keys
        Filters: ``modality, train_dataset, model, imageset, subject, roi`` (scalars or lists).

    Returns
    -------
    list of SourceEntry

    Raises
    ------
    ConversionError
        No file matches.
    SourceFormatError
        An old-style file name disagrees with its folder, or one folder holds the same entry
        under both names.

    Examples
    --------
    >>> import tempfile
    >>> from nest_data.synthetic import write_ned
    >>> from nest_data.converters import discover_ned
    >>> ned = write_ned(tempfile.mkdtemp(), modalities=["eeg"], subjects=[1, 2],
    ...                 imagesets=["things"], n_images=4, show_progress=False)
    >>> [s.entry.subject for s in discover_ned(ned.parent)]
    [1, 2]
    """
    cat = catalog or default_catalog()
    wanted = {(e.modality, e.train_dataset, e.model, e.imageset, e.subject, e.roi)
              for e in cat.search(**keys)}
    found: dict[tuple[Any, ...], SourceEntry] = {}
    roots = _ned_roots(Path(src))
    for root in roots:
        in_root: dict[tuple[Any, ...], Path] = {}
        for h5 in sorted(root.glob("modality-*/train_dataset-*/model-*/imageset-*/*.h5")):
            key = _entry_key(root, h5)
            if key is None:
                continue
            if key in in_root:
                raise SourceFormatError(
                    f"{h5.parent}: two files hold the same entry: {in_root[key].name} and "
                    f"{h5.name} (NED's file names before and after its 2024-05-26 rename). "
                    "Keep one of them, with its metadata .npy, and remove the other.")
            in_root[key] = h5
        for key, h5 in in_root.items():
            if key not in wanted or key in found:
                continue
            entry = cat.resolve(**dict(zip(("modality", "train_dataset", "model", "imageset",
                                            "subject", "roi"), key, strict=True)))
            npy = h5.with_name(h5.name.replace(DATASET + "_", DATASET + "_metadata_", 1)
                               ).with_suffix(".npy")
            found[key] = SourceEntry(entry, h5, npy)
    if not found:
        filters = ", ".join(f"{k}={v!r}" for k, v in keys.items() if v is not None) or "none"
        raise ConversionError(
            f"no NED response files under {src} match the filters ({filters}). Looked in "
            f"{', '.join(str(r) for r in roots) or src} for modality-*/train_dataset-*/model-*/"
            "imageset-*/synthetic_neural_responses_sub-XX[_roi-ROI].h5 (or NED's older "
            "synthetic_neural_responses_training_dataset-D_model-X_imageset-S_sub-XX[_roi-ROI]"
            ".h5). Check SRC (the folder "
            f"holding {' or '.join(NED_ROOT_NAMES)}) and the filters."
        )
    return sorted(found.values(), key=lambda s: s.entry.path)


def _entry_key(root: Path, h5: Path) -> tuple[Any, ...] | None:
    """``(modality, train_dataset, model, imageset, subject, roi)`` of a NED response file.

    Both of NED's file names are read; an old name (before 2024-05-26) repeats the folder's
    train dataset, model and image set, which must agree.  Other ``.h5`` files give None.
    """
    folder = _FOLDER_RE.match(h5.parent.relative_to(root).as_posix())
    name = _NAME_RE.match(h5.name) or _OLD_NAME_RE.match(h5.name)
    if folder is None or name is None:
        return None
    keys = folder.groupdict()
    named = {k: v for k, v in name.groupdict().items() if k in keys}
    differ = {k: v for k, v in named.items() if v != keys[k]}
    if differ:
        raise SourceFormatError(
            f"{h5}: the file name says " + ", ".join(f"{k} {v!r}" for k, v in differ.items())
            + " but its folder says " + ", ".join(f"{k} {keys[k]!r}" for k in differ)
            + ". A file in modality-M/train_dataset-D/model-X/imageset-S/ must be named "
            "synthetic_neural_responses_sub-SS[_roi-R].h5 or (NED's name before 2024-05-26) "
            "synthetic_neural_responses_training_dataset-D_model-X_imageset-S_sub-SS[_roi-R].h5."
            " Move the file to the folder its name gives, or rename it.")
    return (keys["modality"], keys["train_dataset"], keys["model"], keys["imageset"],
            int(name["subject"]), name["roi"])


def _ned_roots(src: Path) -> list[Path]:
    if not src.is_dir():
        raise ConversionError(f"NED source folder {src} does not exist or is not a folder")
    if any(src.glob("modality-*")):
        return [src]
    return [src / name for name in NED_ROOT_NAMES if (src / name).is_dir()]


@_config.progress_option
def convert_ned(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    modality: str | list[str] | None = None,
    subject: int | list[int] | None = None,
    roi: str | list[str] | None = None,
    imageset: str | list[str] | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    verify_existing: bool = True,
    storage_options: Mapping[str, Any] | None = None,
    show_progress: bool | None = None,
    catalog: Catalog | None = None,
) -> ConversionReport:
    """Convert a NED folder of pre-generated responses into nest-data Zarr stores.

    Each entry becomes one store at ``dest/<catalog path>``; values are copied bit for bit,
    streamed one chunk at a time, and every metadata field becomes a coordinate or an
    attribute.  A store appears at its final path only when complete.  Rerunning after an
    interruption skips entries whose store is complete, made from the same source files
    and (with ``verify_existing``) passes its checksums.

    Parameters
    ----------
    src : path
        Folder holding NED's ``pregenerated_insilico_neural_responses/`` (or
        ``synthetic_neural_responses/``).
    dest : path or URL
        Root of the collection to write: a local folder, or a remote fsspec URL
        (``s3://bucket/prefix``, ``gs://...``) to publish a collection to a bucket.  Stores
        are built locally and uploaded with their root ``zarr.json`` last, so a remote store
        exists only once it is complete.
    modality, subject, roi, imageset : optional
        Convert only matching entries (scalars or lists).
    workers : int, optional
        Processes converting entries in parallel (default: number of CPUs, at most 4).
    overwrite : bool
        Reconvert entries even when a complete store exists.
    verify_existing : bool
        Re-check the checksums of existing stores before skipping them.
    storage_options : dict, optional
        fsspec options for a remote ``dest`` (credentials, ``endpoint_url``...).
    show_progress : bool, optional
        Progress bar over entries.
    catalog : Catalog, optional
        Catalog giving the store paths.

    Returns
    -------
    ConversionReport

    Raises
    ------
    ConversionError
        Some entries failed (the others are converted); the message names each source file
        and what is wrong with it.
    NoSpaceError
        ``dest`` (or, for a remote ``dest``, the local staging folder) ran out of space; the
        entries that fit are converted, nothing half-written is visible.
    WriterLockError
        Another process is writing to the local ``dest``; one writer at a time per
        destination (:func:`nest_data._locks.writer_lock`).

    Examples
    --------
    >>> import tempfile
    >>> from nest_data.synthetic import write_ned
    >>> from nest_data.converters import convert_ned
    >>> src = tempfile.mkdtemp()
    >>> _ = write_ned(src, modalities=["fmri"], subjects=[1], rois=["V1"], imagesets=["nsd"],
    ...               n_images=8, show_progress=False)
    >>> print(convert_ned(src, tempfile.mkdtemp(), workers=1, show_progress=False))
    1 converted, 0 already complete, 0 failed
    """
    cat = catalog or default_catalog()
    sources = discover_ned(src, catalog=cat, modality=modality, subject=subject, roi=roi,
                           imageset=imageset)
    dest_text = os.fspath(dest)
    options = dict(storage_options or {})
    if is_local(dest_text):
        if options:
            make_store(dest_text, options)  # raises: options are useless for a folder
        make_root(dest_text)
    else:
        validate_storage_options(dest_text, options)
    report = ConversionReport()
    full: list[SourceEntry] = []  # entries that failed for want of space
    with writer_lock(dest_text, "convert ned"):
        removed = clean_staging(dest_text)
        if removed:
            logger.info("removed %d partial store(s) left by an interrupted run in %s",
                        removed, dest_text)
        n_workers = min(workers or min(os.cpu_count() or 1, 4), len(sources))
        jobs = [(s, dest_text, options, cat.model_spec(s.entry).units, overwrite,
                 verify_existing) for s in sources]
        for job, outcome in run_jobs(_attempt, jobs, workers=n_workers, desc="converting NED",
                                     unit="entry"):
            label = job[0].entry.label
            if isinstance(outcome, BaseException):
                if is_no_space(outcome):
                    full.append(job[0])
                report.failed[label] = (str(outcome) if isinstance(outcome, NestDataError)
                                        else f"{type(outcome).__name__}: {outcome}")
                logger.error("failed to convert %s: %s", label, outcome)
            elif outcome == "skipped":
                report.skipped.append(label)
            else:
                report.converted.append(label)
    report.converted.sort()
    report.skipped.sort()
    logger.info("NED conversion into %s: %s", dest_text, report)
    if full:
        others = len(report.failed) - len(full)
        raise no_space_error(dest_text, needs=sum(s.h5.stat().st_size for s in full),
                             done=f"{len(report.converted)} of {len(sources)} entries "
                                  f"converted, {len(report.skipped)} already complete"
                                  + (f", {others} failed otherwise (logged)" if others else ""))
    if report.failed:
        listing = "\n  ".join(f"{k}: {v}" for k, v in sorted(report.failed.items()))
        raise ConversionError(
            f"{len(report.failed)} of {len(sources)} entries failed ({report}); nothing was "
            f"written for them:\n  {listing}\nFix or re-download those files and rerun the "
            "same command: completed entries are skipped."
        )
    return report


def _attempt(job: tuple[SourceEntry, str, dict[str, Any], str, bool, bool]) -> str:
    source, dest, options, units, overwrite, verify_existing = job
    return convert_entry(source, dest, storage_options=options, units=units,
                         overwrite=overwrite, verify_existing=verify_existing)
